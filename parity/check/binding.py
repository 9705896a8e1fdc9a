"""Binding one constructed user layer object to one spec layer (`Binder`): its kind (conv, dense, max-pool or ReLU)
and which of its arrays hold which parameter in which layout (filters, weights, biases), read from its arrays and one
probe forward, as a `BoundLayer` with the members it chose (`Choice`) and those it could not find (`Missing`).
Constructing the layers and reading them as a network is `parity.check.infer`'s job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from parity.check.classifier import dense_totals, find_logits, refuse_dense_output, refuse_softmax_layer, unseen_logits
from parity.check.layercalls import LayerCall
from parity.check.layouts import (
    ParamBinding,
    bias_layout,
    conv_layouts,
    conv_output_layout,
    layout_error,
    matching_layouts,
)
from parity.check.loader import Impl
from parity.check.members import Methods
from parity.check.names import Choice, ImplError, LayerMisbehaves, Missing, NamesError
from parity.check.usercode import ImplCrash, guarded, returned_array

BIAS_NAMES = ("biases", "bias", "b")


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
    logits_unseen: str = ""  # the last layer: why no cached array is read as its logits, when one was found
    input_length_arg: int | str | None = None  # dense: the constructor argument that is its input length
    description: str = ""  # `5x5 conv, 16 filters on 8 channels: filters (16, 8, 5, 5) as (F, C, K, K)`
    found: tuple[Choice, ...] = ()  # members taken because they were the only ones that fit


def arrays_of(obj) -> dict[str, np.ndarray]:
    """The object's floating-point array attributes, by name."""
    attributes = getattr(obj, "__dict__", {})
    return {
        name: value
        for name, value in attributes.items()
        if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating)
    }


def _not_floating(obj) -> str:
    """The object's arrays that are not floating point, as a clause: weights held as integers are not read as
    parameters, and the message should say so rather than only that none was found."""
    arrays = [(n, v) for n, v in getattr(obj, "__dict__", {}).items() if isinstance(v, np.ndarray)]
    others = [f"{n} {_shape(v.shape)} is {v.dtype}" for n, v in arrays if not np.issubdtype(v.dtype, np.floating)]
    hint = ": not floating point, so not read as a parameter (make it float64 or float32)"
    return f"; {', '.join(others)}{hint}" if others else ""


@dataclass
class Binder:
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

    def bind(
        self, shape: tuple[int, ...], value: np.ndarray, last: bool, rng: np.random.Generator
    ) -> tuple[BoundLayer, np.ndarray]:
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
        layouts = conv_layouts(filters.shape, channels)
        if not layouts:
            raise ImplError(layout_error(self.impl.label, self.cls, filters_attr, filters.shape, channels))
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
            layouts = matching_layouts(layouts, filters, x, out) or layouts[:1]
        layout, (kernel, count) = layouts[0]
        expected = (shape[0] - kernel + 1, shape[1] - kernel + 1, count)
        out = self._output(out, expected, conv_output_layout(out.shape, shape))
        params = [ParamBinding("filters", filters_attr, layout, filters.shape)]
        bias_attr = self._bias(arrays, count, exclude=filters_attr)
        if bias_attr is not None:
            bias = arrays[bias_attr]
            params.append(ParamBinding("biases", bias_attr, bias_layout(bias.shape), bias.shape))
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
        totals = dense_totals(value, weights, layout, arrays.get(bias_attr))
        refuse_dense_output(self.impl.label, self.cls, self.methods.forward, out, totals, last)
        params = [ParamBinding("weights", weights_attr, layout, weights.shape)]
        if bias_attr is not None:
            bias = arrays[bias_attr]
            params.append(ParamBinding("biases", bias_attr, bias_layout(bias.shape), bias.shape))
        logits = self._logits(out, bias_attr) if last else None
        unseen = unseen_logits(self.cls, logits, arrays_of(self.obj)[logits], totals) if logits else ""
        cached = "" if not last else f"; logits cached in {logits}" if logits else "; logits not cached"
        description = (
            f"{units} units on {inputs} inputs: {weights_attr} {_shape(weights.shape)} as {layout}"
            + (f", bias {bias_attr} {_shape(arrays[bias_attr].shape)}" if bias_attr else "")
            + ("; softmax in forward" if last else "")
            + (f"; {logits} holds the totals shifted by a constant, not compared" if unseen else cached)
        )
        return BoundLayer(
            self.call,
            self.cls,
            "dense",
            f"dense{units}",
            self.methods,
            tuple(params),
            logits=None if unseen else logits,
            logits_unseen=unseen,
            input_length_arg=argument_equal_to(self.call, inputs),
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
                position = argument_equal_to(self.call, length)
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
        name, why = find_logits(cached, probs, mapped)
        if name is None and mapped is not None:
            missing = Missing("attribute", self.call.cls, "last_totals", mapped, tuple(cached), why, self.cls)
            self.problems.append(missing)
        elif name is not None and why:
            self.found.append(Choice(self.call.cls, "last_totals", name, why, self.cls))
        return name

    # --- pool and relu ----------------------------------------------------------------------------------------

    def _parameter_free(self, shape, value, rng) -> tuple[BoundLayer, np.ndarray]:
        x = value if value.ndim == len(shape) else value.reshape(shape)
        out = self._forward(x)
        out_shape = np.shape(out)
        refuse_softmax_layer(self.impl.label, self.cls, self.methods.forward, x, out)
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
        raise LayerMisbehaves(
            f"{self.impl.label}: {self.cls} holds no weights and its forward maps {_hwc(shape)} to {_hwc(out_shape)}: "
            "neither a max-pool (H // K x W // K, the same channels) nor a ReLU (the same shape); the layers checked "
            "are conv, ReLU, max-pool and dense",
            self.cls,
            self.methods.forward,
            self.layer,
            f"maps {_hwc(shape)} to {_hwc(out_shape)}: neither a max-pool (H // K x W // K, the same channels) nor "
            "a ReLU (the same shape)",
        )

    # --- helpers ----------------------------------------------------------------------------------------------

    def _forward(self, x: np.ndarray) -> np.ndarray:
        method = getattr(self.obj, self.methods.forward)
        out = guarded(self.cls, self.methods.forward, self.layer, method, x, timeout=self.timeout)
        return returned_array(self.cls, self.methods.forward, self.layer, out)

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
        detail = f"{why}after construction it holds {held}" + _not_floating(self.obj)
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


def argument_equal_to(call: LayerCall, value: int) -> int | str | None:
    """Which of the call's arguments is `value` (the dense input length), for a probe at another image size."""
    positions = [i for i, arg in enumerate(call.args) if arg == value and type(arg) is int]
    positions += [k for k, arg in call.kwargs if arg == value and type(arg) is int]
    return positions[0] if len(positions) == 1 else None


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _hwc(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))
