"""The architecture from the code: each user layer object becomes one spec layer, with how its weights are laid out.

The layer objects are constructed (the tutorial's trio, or `--layers`) and fed a probe image in order:
- a layer holding a 3-D or 4-D array is a conv: the kernel size and filter count come from that array, its layout
  from which axes are equal (`(F, K, K)`; with channels `(F, K, K, C)`, `(F, C, K, K)` or `(K, K, C, F)`, C being
  the channels of its input); when two layouts fit the shape, from which one reproduces its output;
- a layer holding a 2-D array is a dense layer: `(in, out)` or `(out, in)` by which side matches its input;
- a layer without arrays is a max-pool or a ReLU, told apart by what it does to the shape: a pool of size K maps
  H x W to H // K x W // K (probed at a second size when one does not settle K); a ReLU keeps it.
Parameter attributes are found by the tutorial's names, `--map`, or as the one array of the right rank. The last
layer is the classifier (the tutorial's `Softmax`: a dense layer whose forward returns probabilities), and its
logits are read from `last_totals`, or from the one cached vector whose softmax is what forward returned.

What was found, and how, is kept as data (`BoundLayer`, `Architecture.found`) for the first lines of the output
and for report.json. The global NumPy RNG (the tutorial's constructors draw from it) is left as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from parity.check.layercalls import LayerCall
from parity.check.loader import Choice, Impl, ImplError, Missing, NamesError
from parity.check.members import Methods, resolve_methods
from parity.check.usercode import DEFAULT_TIMEOUT, ImplCrash, guarded
from scratch.spec import NetworkSpec, parse_spec

TUTORIAL_FILTERS = 8  # Conv3x3(8), as the tutorial constructs it
CONV_LAYOUTS = {  # user layout -> the axes of (F, K, K, C) it holds, in its order
    "(F, K, K, C)": (0, 1, 2, 3),
    "(F, C, K, K)": (0, 3, 1, 2),
    "(K, K, C, F)": (1, 2, 3, 0),
}
SINGLE_CHANNEL_LAYOUTS = {"(F, K, K)": (0, 1, 2), "(K, K, F)": (1, 2, 0)}  # no channel axis: one input channel
BIAS_NAMES = ("biases", "bias", "b")


@dataclass(frozen=True)
class ParamBinding:
    """One parameter: the spec's name, the user's attribute, and the user's layout of it."""

    param: str  # `filters`, `biases`, `weights`
    attribute: str
    layout: str  # `(F, C, K, K)`, `(in, out)`, `(N,)`, ...
    shape: tuple[int, ...]  # the user's shape

    def to_scratch(self, value: np.ndarray) -> np.ndarray:
        """The user's array in scratch's layout (filters `(F, K, K[, C])`, weights `(in, out)`, biases `(N,)`)."""
        value = np.asarray(value)
        if self.param == "biases":
            return value.reshape(-1)
        if self.param == "weights":
            return value.T if self.layout == "(out, in)" else value
        if self.layout in SINGLE_CHANNEL_LAYOUTS:
            return value.transpose(np.argsort(SINGLE_CHANNEL_LAYOUTS[self.layout]))
        fkkc = value.transpose(np.argsort(CONV_LAYOUTS[self.layout]))
        return fkkc[..., 0] if fkkc.shape[3] == 1 else fkkc

    def to_user(self, value: np.ndarray) -> np.ndarray:
        """A scratch-layout array in the user's layout and shape."""
        value = np.asarray(value)
        if self.param == "biases":
            return value.reshape(self.shape)
        if self.param == "weights":
            return value.T if self.layout == "(out, in)" else value
        if self.layout in SINGLE_CHANNEL_LAYOUTS:
            return value.transpose(SINGLE_CHANNEL_LAYOUTS[self.layout])
        fkkc = value[..., np.newaxis] if value.ndim == 3 else value
        return fkkc.transpose(CONV_LAYOUTS[self.layout])


@dataclass(frozen=True)
class BoundLayer:
    """One user layer object as one spec layer: how to construct it, call it and read its weights."""

    call: LayerCall  # `cls` is the role key of `Impl.classes`
    cls_name: str  # the user's class name
    kind: str  # conv, relu, pool or dense
    item: str  # its spec item: `conv5x16`, `pool2`, `relu`, `dense10`
    methods: Methods
    params: tuple[ParamBinding, ...] = ()
    image_input: bool = False  # takes the 2-D image (H, W), as the tutorial's first conv does, not (H, W, 1)
    logits: str | None = None  # the last layer: the attribute its forward caches the logits in
    input_length_arg: int | str | None = None  # dense: the constructor argument that is its input length
    description: str = ""  # `5x5 conv, 16 filters on 8 channels: filters (16, 8, 5, 5) as (F, C, K, K)`
    found: tuple[Choice, ...] = ()  # members taken because they were the only ones that fit


@dataclass(frozen=True)
class Architecture:
    """The implementation as a network: one `BoundLayer` per spec layer, the spec, and what was inferred."""

    impl: Impl
    layers: tuple[BoundLayer, ...]
    spec: NetworkSpec
    timeout: float | None = DEFAULT_TIMEOUT
    found: tuple[Choice, ...] = ()  # every choice made by fit (classes, methods, attributes), in layer order

    @property
    def calls(self) -> tuple[LayerCall, ...]:
        """The layer objects to construct, with the classes' own names (as `--layers` writes them)."""
        return tuple(LayerCall(layer.cls_name, layer.call.args, layer.call.kwargs) for layer in self.layers)

    def rows(self) -> list[dict[str, str]]:
        """One row per layer: spec name, the user's call, the item, what was inferred (for the output and JSON)."""
        return [
            {"layer": spec_layer.name, "object": call.text(), "item": layer.item, "inferred": layer.description}
            for spec_layer, layer, call in zip(self.spec.layers, self.layers, self.calls, strict=True)
        ]


def infer_architecture(
    impl: Impl,
    image_shape: tuple[int, int] = (28, 28),
    num_classes: int = 10,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    calls: tuple[LayerCall, ...] | None = None,
    layer_names: tuple[str, ...] | None = None,
) -> Architecture:
    """Construct the layers, probe them in order and bind each to a spec layer. `calls` overrides `impl.calls`
    (the odd-size probe's adjusted input lengths); `layer_names`, the spec's layer names when known, name the layer
    in a crash (else `layer 2`). NamesError for attributes that cannot be found, ImplError for shapes that make no
    network, ImplCrash when a layer raises (or hangs) on the probe."""
    methods = resolve_methods(impl)
    calls = calls if calls is not None else impl.calls
    state = np.random.get_state()
    try:
        return _infer(impl, methods, calls, tuple(image_shape), num_classes, timeout, layer_names)
    finally:
        np.random.set_state(state)


class ProbeSkipped(Exception):
    """The network cannot be rebuilt at another image size; the reason in one line."""


def at_image_size(arch: Architecture, image_shape: tuple[int, int]) -> Architecture:
    """The same layers built for `image_shape` (each classifier's input length argument changed to fit), inferred
    again; ProbeSkipped when the network does not fit that size or an input length is no constructor argument."""
    size = "x".join(map(str, image_shape))
    try:
        spec = parse_spec(arch.spec.text, tuple(image_shape), arch.spec.num_classes)
    except ValueError as error:
        raise ProbeSkipped(f"the network does not fit {size} images ({error})") from None
    calls = []
    for layer, old, new in zip(arch.layers, arch.spec.layers, spec.layers, strict=True):
        call = layer.call
        if layer.kind == "dense" and math.prod(old.in_shape) != math.prod(new.in_shape):
            if layer.input_length_arg is None:
                raise ProbeSkipped(
                    f"{layer.call.text()}: no argument is its input length {math.prod(old.in_shape)}, so it cannot be "
                    f"constructed for {size} images"
                )
            call = call.with_arg(layer.input_length_arg, math.prod(new.in_shape))
        calls.append(call)
    names = tuple(layer.name for layer in spec.layers)
    rebuilt = infer_architecture(
        arch.impl,
        image_shape,
        arch.spec.num_classes,
        timeout=arch.timeout,
        calls=tuple(calls) if arch.impl.calls is not None else None,
        layer_names=names,
    )
    if rebuilt.spec.text != arch.spec.text:
        raise ImplError(
            f"{arch.impl.label}: at {size} the layers act as {rebuilt.spec.text}, not {arch.spec.text} as at "
            f"{'x'.join(map(str, arch.spec.image_shape))}"
        )
    return rebuilt


def _infer(impl, methods, calls, image_shape, num_classes, timeout, layer_names) -> Architecture:
    bound, problems, found, _ = _bind_all(impl, methods, calls, image_shape, num_classes, timeout, layer_names)
    if problems:
        raise NamesError(impl.label, problems, impl.catalogue)
    text = ",".join(layer.item for layer in bound)
    last = bound[-1]
    if last.kind == "dense" and last.item != f"dense{num_classes}" and calls is not None:
        _other_class_count(impl, last, num_classes, len(bound) - 1)
    if last.kind != "dense" or last.item != f"dense{num_classes}":
        raise ImplError(
            f"{impl.label}: the last layer must be the classifier, a dense layer of {num_classes} units whose forward "
            f"returns the softmax probabilities (the tutorial's Softmax); the layers found are {text}"
        )
    try:
        spec = parse_spec(text, image_shape, num_classes)
    except ValueError as error:
        raise ImplError(f"{impl.label}: the layers found make no network: {error}") from None
    return Architecture(impl, tuple(bound), spec, timeout, tuple(found))


def _other_class_count(impl: Impl, last: BoundLayer, num_classes: int, index: int) -> None:
    """A classifier for another number of classes (code written for another data set), one argument of which is
    that number: NamesError with the call corrected to `num_classes`."""
    units = int(last.item.removeprefix("dense"))
    position = _argument_equal_to(last.call, units)
    if position is None:
        return
    shown = LayerCall(last.cls_name, last.call.args, last.call.kwargs)
    corrected = shown.with_arg(position, num_classes)
    detail = f"a classifier of {units} units; MNIST, which check trains on, has {num_classes} classes"
    problem = Missing(
        "arguments",
        last.call.cls,
        "",
        shown.text(),
        detail=detail,
        owner=last.cls_name,
        index=index,
        corrected=corrected,
    )
    raise NamesError(impl.label, [problem], impl.catalogue)


def _bind_all(impl, methods, calls, image_shape, num_classes, timeout, layer_names):
    """Construct and bind the layers in order: (bound layers, problems, what was found, the last output shape)."""
    rng = np.random.default_rng(12345)
    value = rng.random(image_shape) - 0.5  # a probe image, normalised as the tutorial normalises
    shape: tuple[int, ...] = (*image_shape, 1)  # HWC, as the spec sees it
    bound, problems, found = [], [], list(impl.found)
    planned = list(calls) if calls is not None else _tutorial_calls()
    for position, call in enumerate(planned):
        if calls is None and call.cls == "Softmax":  # the tutorial's Softmax(input_len, 10), from the shape here
            call = LayerCall("Softmax", (math.prod(shape), num_classes))
        last = position == len(planned) - 1
        layer_name = layer_names[position] if layer_names else f"layer {position + 1}"
        obj = construct(impl, call, layer_name, position)
        binder = _Binder(impl, call, obj, methods[call.cls], layer_name, timeout, position)
        layer, value = binder.bind(shape, value, last, rng)
        problems += binder.problems
        found += layer.found
        bound.append(layer)
        shape = tuple(value.shape)
    return bound, problems, found, shape


def shape_after(
    impl: Impl, calls: tuple[LayerCall, ...], image_shape: tuple[int, int], timeout: float | None = DEFAULT_TIMEOUT
) -> tuple[int, ...]:
    """The output shape (HWC, or (N,)) of the layers `calls` construct, fed an image of `image_shape`: what a
    classifier after them reads. NamesError, ImplError or ImplCrash as `infer_architecture`."""
    methods = resolve_methods(replace(impl, calls=tuple(calls)))
    state = np.random.get_state()
    try:
        bound, problems, _, shape = _bind_all(impl, methods, calls, tuple(image_shape), 0, timeout, None)
    finally:
        np.random.set_state(state)
    if problems:
        raise NamesError(impl.label, problems, impl.catalogue)
    return shape


def _tutorial_calls() -> list[LayerCall]:
    return [LayerCall("Conv3x3", (TUTORIAL_FILTERS,)), LayerCall("MaxPool2"), LayerCall("Softmax")]


def construct(impl: Impl, call: LayerCall, layer: str, index: int | None = None):
    """`call`'s object; ImplError (with the constructor's parameters) when the class does not take those arguments."""
    cls = impl.classes[call.cls]
    shown = LayerCall(cls.__name__, call.args, call.kwargs).text()
    try:
        return guarded(cls.__name__, "__init__", layer, lambda: cls(*call.args, **dict(call.kwargs)))
    except ImplCrash as crash:
        from parity.check.catalogue import class_from_runtime

        info = class_from_runtime(cls, impl.sources.get(call.cls, ""))
        how = "as in the tutorial" if impl.calls is None else "as --layers says"
        detail = f"{crash.detail} (constructed {how}; it takes {info.constructor()})"
        problem = Missing(
            "arguments",
            call.cls,
            "",
            shown,
            detail=detail,
            owner=cls.__name__,
            index=index,
        )
        raise NamesError(impl.label, [problem], impl.catalogue) from None


def arrays_of(obj) -> dict[str, np.ndarray]:
    """The object's floating-point array attributes, by name."""
    attributes = getattr(obj, "__dict__", {})
    return {
        name: value
        for name, value in attributes.items()
        if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating)
    }


@dataclass
class _Binder:
    """Binds one constructed user layer: its kind, parameters and output, from its arrays and one probe forward."""

    impl: Impl
    call: LayerCall
    obj: object
    methods: Methods
    layer: str
    timeout: float | None
    index: int = 0  # the position of the call in the layer sequence
    problems: list[Missing] = field(default_factory=list)
    found: list[Choice] = field(default_factory=list)

    @property
    def cls(self) -> str:
        return type(self.obj).__name__

    def bind(self, shape, value, last, rng) -> tuple[BoundLayer, np.ndarray]:
        """The bound layer and its output on `value` (the previous layer's output, the user's form)."""
        arrays = arrays_of(self.obj)
        mapped = {m: self.impl.mapping.mapped(f"{self.call.cls}.{m}") for m in ("filters", "weights")}
        role_kind = {"Conv3x3": "conv", "Softmax": "dense"}.get(self.call.cls) if self.impl.calls is None else None
        if mapped["filters"] or role_kind == "conv" or (not mapped["weights"] and _has_rank(arrays, (3, 4))):
            layer, out = self._conv(arrays, shape, value, rng)
        elif mapped["weights"] or role_kind == "dense" or _has_rank(arrays, (2,)):
            layer, out = self._dense(arrays, shape, value, last)
        else:
            layer, out = self._parameter_free(shape, value, rng)
        found = tuple(self.methods.found) + tuple(self.found)
        return replace(layer, found=found), out

    # --- conv -------------------------------------------------------------------------------------------------

    def _conv(self, arrays, shape, value, rng) -> tuple[BoundLayer, np.ndarray]:
        channels = shape[2] if len(shape) == 3 else None
        filters_attr = self._attribute("filters", arrays, lambda a: a.ndim in (3, 4), "3-D or 4-D array")
        if filters_attr is None:  # keep going on its output, so every other name is found in this run too
            out = self._forward(value if value.ndim == 2 or shape[2] != 1 else value[..., 0])
            return self._unbound("conv", out), out
        filters = arrays[filters_attr]
        if channels is None:
            raise ImplError(
                f"{self.impl.label}: {self.cls} holds filters {filters.shape}, but its input is flat "
                f"({shape[0]} values after a dense layer); a conv needs an image-shaped input"
            )
        layouts = _conv_layouts(filters.shape, channels)
        if not layouts:
            raise ImplError(_layout_error(self.impl.label, self.cls, filters_attr, filters.shape, channels))
        x = value if value.ndim == 3 else value[..., np.newaxis]  # (H, W, C)
        # One input channel: the 2-D image, as the tutorial's Conv3x3 takes it, when the filters have no channel
        # axis; (H, W, 1) otherwise. The other form is tried when the first raises.
        forms = [filters.ndim == 3, filters.ndim != 3] if channels == 1 else [False]
        crashes = []
        for takes_image in forms:
            try:
                out = self._forward(x[..., 0] if takes_image else x)
                break
            except ImplCrash as crash:
                if crash.timed_out:
                    raise
                crashes.append(crash)
        else:
            first = crashes[0]
            tried = f"a {_hwc(x.shape)} (HWC) input" + (
                f" and the 2-D image {_hwc(x.shape[:2])}" if channels == 1 else ""
            )
            raise ImplCrash(
                first.cls,
                first.method,
                f"{first.detail}, given {tried}; check passes activations as height, "
                "width, channels, as the tutorial does",
                first.layer,
                first.timed_out,
            )
        if len(layouts) > 1:
            layouts = _matching_layouts(layouts, filters, x, out) or layouts[:1]
        layout, (kernel, count) = layouts[0]
        expected = (shape[0] - kernel + 1, shape[1] - kernel + 1, count)
        out = self._output(out, expected, "HWC (h - K + 1, w - K + 1, filters)")
        params = [ParamBinding("filters", filters_attr, layout, filters.shape)]
        bias_attr = self._bias(arrays, count, exclude=filters_attr)
        if bias_attr is not None:
            bias = arrays[bias_attr]
            params.append(ParamBinding("biases", bias_attr, _bias_layout(bias.shape), bias.shape))
        self._needs_lr("conv")
        channel_text = f"{channels} channel{'s' if channels != 1 else ''}"
        description = (
            f"{kernel}x{kernel} conv, {count} filters on {channel_text}: {filters_attr} {_shape(filters.shape)} as "
            f"{layout}"
            + (f", bias {bias_attr} {_shape(arrays[bias_attr].shape)}" if bias_attr else "")
            + ("; takes the 2-D image" if takes_image else "")
        )
        item = f"conv{kernel}x{count}" + ("b" if bias_attr else "")
        return BoundLayer(
            self.call, self.cls, "conv", item, self.methods, tuple(params), takes_image, description=description
        ), out

    # --- dense ------------------------------------------------------------------------------------------------

    def _dense(self, arrays, shape, value, last) -> tuple[BoundLayer, np.ndarray]:
        inputs = math.prod(shape)
        weights_attr = self._attribute(
            "weights",
            arrays,
            lambda a: a.ndim == 2,
            "2-D array",
            prefer=lambda a: inputs in a.shape and min(a.shape) > 1,
        )
        if weights_attr is None:
            out = self._forward(value)
            return self._unbound("dense", out), out
        weights = arrays[weights_attr]
        if weights.shape[0] == inputs:
            layout, units = "(in, out)", weights.shape[1]
        elif weights.shape[1] == inputs:
            layout, units = "(out, in)", weights.shape[0]
        else:
            self._wrong_input_length(weights_attr, weights.shape, shape, inputs)
        bias_attr = self._bias(arrays, units, exclude=weights_attr)
        if bias_attr is None:
            self.problems.append(
                Missing(
                    "attribute",
                    self.call.cls,
                    "biases",
                    "biases",
                    tuple(n for n in arrays if n != weights_attr),
                    f"no array of {units} values besides {weights_attr}; a dense layer here has a bias",
                    self.cls,
                )
            )
        self._needs_lr("dense")
        out = self._forward(value)
        out = self._output(out, (units,), "(nodes,)")
        params = [ParamBinding("weights", weights_attr, layout, weights.shape)]
        if bias_attr is not None:
            bias = arrays[bias_attr]
            params.append(ParamBinding("biases", bias_attr, _bias_layout(bias.shape), bias.shape))
        logits = self._logits(out, bias_attr) if last else None
        description = (
            f"{units} units on {inputs} inputs: {weights_attr} {_shape(weights.shape)} as {layout}"
            + (f", bias {bias_attr} {_shape(arrays[bias_attr].shape)}" if bias_attr else "")
            + ("; softmax in forward" if last else "")
            + (f"; logits cached in {logits}" if logits else "; logits not cached" if last else "")
        )
        return BoundLayer(
            self.call,
            self.cls,
            "dense",
            f"dense{units}",
            self.methods,
            tuple(params),
            logits=logits,
            input_length_arg=_argument_equal_to(self.call, inputs),
            description=description,
        ), out

    def _wrong_input_length(self, attribute, weights_shape, shape, inputs) -> None:
        """Weights that read another number of inputs than the layer before gives: NamesError with the call fixed
        when one of its arguments is that other number (`Softmax(256,10)` for 64 inputs), else ImplError."""
        where = "x".join(map(str, shape))
        text = (
            f"{self.cls}.{attribute} has shape {weights_shape}, but the layer before it gives {where} = {inputs} "
            f"inputs; expected ({inputs}, N) as in the tutorial, or (N, {inputs})"
        )
        if self.impl.calls is not None:
            for length in weights_shape:
                position = _argument_equal_to(self.call, length)
                if position is not None:
                    corrected = self.call.with_arg(position, inputs)
                    problem = Missing(
                        "arguments",
                        self.call.cls,
                        "",
                        LayerCall(self.cls, self.call.args, self.call.kwargs).text(),
                        detail=text,
                        owner=self.cls,
                        index=self.index,
                        corrected=LayerCall(self.cls, corrected.args, corrected.kwargs),
                    )
                    raise NamesError(self.impl.label, [problem], self.impl.catalogue)
        raise ImplError(f"{self.impl.label}: {text}")

    def _logits(self, probs: np.ndarray, bias_attr: str | None) -> str | None:
        mapped = self.impl.mapping.mapped(f"{self.call.cls}.last_totals")
        cached = {n: a for n, a in arrays_of(self.obj).items() if a.shape == probs.shape and n != bias_attr}
        if mapped is not None:
            if mapped not in cached:
                self.problems.append(
                    Missing(
                        "attribute",
                        self.call.cls,
                        "last_totals",
                        mapped,
                        tuple(cached),
                        f"no array of shape {probs.shape} of that name after forward",
                        self.cls,
                    )
                )
                return None
            return mapped
        if "last_totals" in cached:
            return "last_totals"
        fits = [n for n, a in cached.items() if np.all(np.isfinite(a)) and np.allclose(_softmax(a), probs, rtol=1e-6)]
        if len(fits) == 1:
            reason = "the only cached vector whose softmax it returns"
            self.found.append(Choice(self.call.cls, "last_totals", fits[0], reason, self.cls))
            return fits[0]
        return None

    # --- pool and relu ----------------------------------------------------------------------------------------

    def _parameter_free(self, shape, value, rng) -> tuple[BoundLayer, np.ndarray]:
        x = value if value.ndim == len(shape) else value.reshape(shape)
        out = self._forward(x)
        out_shape = np.shape(out)
        if out_shape == x.shape:
            return BoundLayer(
                self.call, self.cls, "relu", "relu", self.methods, description="ReLU: keeps the shape"
            ), np.asarray(out)
        if len(shape) == 3 and len(out_shape) == 3 and out_shape[2] == shape[2] and out_shape[0] < shape[0]:
            sizes = [
                k for k in range(2, shape[0] + 1) if shape[0] // k == out_shape[0] and shape[1] // k == out_shape[1]
            ]
            if len(sizes) > 1:  # a second size at which H // K differs for every K still possible
                side = sizes[-1] * (sizes[-1] + 1)
                probe = self._forward(rng.standard_normal((side, side, shape[2])))
                sizes = [k for k in sizes if np.shape(probe)[:2] == (side // k, side // k)]
            if len(sizes) == 1:
                k = sizes[0]
                described = f"{k}x{k} max-pool: {_hwc(shape)} -> {_hwc(out_shape)} on a probe"
                return BoundLayer(
                    self.call, self.cls, "pool", f"pool{k}", self.methods, description=described
                ), np.asarray(out, dtype=np.float64)
        raise ImplError(
            f"{self.impl.label}: {self.cls} holds no weights and its forward maps {_hwc(shape)} to {_hwc(out_shape)}: "
            "neither a max-pool (H // K x W // K, the same channels) nor a ReLU (the same shape); the layers checked "
            "are conv, ReLU, max-pool and dense"
        )

    # --- helpers ----------------------------------------------------------------------------------------------

    def _forward(self, x: np.ndarray) -> np.ndarray:
        method = getattr(self.obj, self.methods.forward)
        out = guarded(self.cls, self.methods.forward, self.layer, method, x, timeout=self.timeout)
        if out is None:
            raise ImplCrash(self.cls, self.methods.forward, "returned None, expected an array", self.layer)
        try:
            return np.array(out, dtype=np.float64)
        except (TypeError, ValueError) as error:
            text = f"returned {type(out).__name__}, not an array: {error}"
            raise ImplCrash(self.cls, self.methods.forward, text, self.layer) from None

    def _output(self, out: np.ndarray, expected: tuple[int, ...], layout: str) -> np.ndarray:
        if out.shape != expected:
            raise ImplCrash(
                self.cls, self.methods.forward, f"returned shape {out.shape}, expected {expected}: {layout}", self.layer
            )
        return out

    def _unbound(self, kind: str, out: np.ndarray) -> BoundLayer:
        return BoundLayer(self.call, self.cls, kind, kind, self.methods)

    def _attribute(self, member, arrays, fits, rank, prefer=None) -> str | None:
        """The attribute holding parameter `member`: mapped, the tutorial's name, or the one array of its rank (of
        those, the ones `prefer` accepts, when it accepts any)."""
        mapped = self.impl.mapping.mapped(f"{self.call.cls}.{member}")
        candidates = [name for name, array in arrays.items() if fits(array)]
        preferred = [name for name in candidates if prefer is not None and prefer(arrays[name])]
        candidates = preferred or candidates
        if mapped is not None:
            if mapped in arrays and fits(arrays[mapped]):
                return mapped
            self._missing(member, mapped, candidates, rank)
            return None
        if member in arrays and fits(arrays[member]):
            return member
        if len(candidates) == 1:
            choice = Choice(self.call.cls, member, candidates[0], f"the only {rank}", self.cls)
            self.found.append(choice)
            return candidates[0]
        self._missing(member, member, candidates, rank)
        return None

    def _missing(self, member, wanted, candidates, rank) -> None:
        held = ", ".join(f"{n} {_shape(a.shape)}" for n, a in arrays_of(self.obj).items()) or "no arrays"
        why = f"{len(candidates)} {rank}s: " if len(candidates) > 1 else ""
        detail = f"{why}after construction it holds {held}"
        self.problems.append(Missing("attribute", self.call.cls, member, wanted, tuple(candidates), detail, self.cls))

    def _bias(self, arrays, units, exclude) -> str | None:
        mapped = self.impl.mapping.mapped(f"{self.call.cls}.biases")
        fits = [
            n for n, a in arrays.items() if n != exclude and a.size == units and a.ndim <= 2 and max(a.shape) == units
        ]
        if mapped is not None:
            if mapped in fits:
                return mapped
            self._missing("biases", mapped, fits, f"array of {units} values")
            return None
        named = [n for n in BIAS_NAMES if n in fits]
        if named:
            return named[0]
        if len(fits) == 1:
            choice = Choice(
                self.call.cls, "biases", fits[0], f"the only array of {units} values besides the weights", self.cls
            )
            self.found.append(choice)
            return fits[0]
        if len(fits) > 1:
            self._missing("biases", "biases", fits, f"array of {units} values")
        return None

    def _needs_lr(self, kind: str) -> None:
        if not self.methods.backprop_takes_lr:
            raise ImplError(
                f"{self.impl.label}: {self.cls}.{self.methods.backprop} takes only a gradient; a {kind} layer's "
                "backprop(gradient, learn_rate) updates its weights in place, as in the tutorial"
            )


def _has_rank(arrays: dict[str, np.ndarray], ranks: tuple[int, ...]) -> bool:
    return any(array.ndim in ranks for array in arrays.values())


def _conv_layouts(shape: tuple[int, ...], channels: int) -> list[tuple[str, tuple[int, int]]]:
    """Every layout the filter shape fits with `channels` input channels: (layout, (kernel, filters))."""
    fits = []
    if len(shape) == 3 and channels == 1:
        for layout, axes in SINGLE_CHANNEL_LAYOUTS.items():
            f, k1, k2 = (shape[axes.index(i)] for i in range(3))
            if k1 == k2:
                fits.append((layout, (k1, f)))
    if len(shape) == 4:
        for layout, axes in CONV_LAYOUTS.items():
            f, k1, k2, c = (shape[axes.index(i)] for i in range(4))
            if k1 == k2 and c == channels:
                fits.append((layout, (k1, f)))
    return fits


def _matching_layouts(layouts, filters: np.ndarray, x: np.ndarray, out: np.ndarray):
    """The layouts under which the user's filters reproduce the user's output on the probe input `x` (H, W, C)."""
    from numpy.lib.stride_tricks import sliding_window_view

    matching = []
    for layout, (kernel, count) in layouts:
        binding = ParamBinding("filters", "", layout, filters.shape)
        fkkc = binding.to_scratch(filters)
        fkkc = fkkc[..., np.newaxis] if fkkc.ndim == 3 else fkkc
        windows = sliding_window_view(x, (kernel, kernel), axis=(0, 1))  # (h', w', C, K, K)
        if out.shape != windows.shape[:2] + (count,):
            continue
        expected = np.einsum("ijckl,fklc->ijf", windows, fkkc)
        if np.allclose(expected, out, rtol=1e-9, atol=1e-12):
            matching.append((layout, (kernel, count)))
    return matching


def _layout_error(label, cls, attribute, shape, channels) -> str:
    if len(shape) == 3:
        return (
            f"{label}: {cls}.{attribute} has shape {shape}, no channel axis, but its input has {channels} channels; a "
            f"conv on {channels} channels holds filters such as (F, K, K, {channels}), (F, {channels}, K, K) or "
            f"(K, K, {channels}, F)"
        )
    return (
        f"{label}: {cls}.{attribute} has shape {shape}, which fits none of (F, K, K, C), (F, C, K, K), (K, K, C, F) "
        f"with C = {channels}, the channels of its input"
    )


def _bias_layout(shape: tuple[int, ...]) -> str:
    return "(N,)" if len(shape) == 1 else "(N, 1)" if shape[1] == 1 else "(1, N)"


def _argument_equal_to(call: LayerCall, value: int) -> int | str | None:
    """Which of the call's arguments is `value` (the dense input length), for a probe at another image size."""
    positions = [i for i, arg in enumerate(call.args) if arg == value and type(arg) is int]
    positions += [k for k, arg in call.kwargs if arg == value and type(arg) is int]
    return positions[0] if len(positions) == 1 else None


def _softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _hwc(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))
