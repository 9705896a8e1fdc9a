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

import inspect
import math
from dataclasses import dataclass, replace

import numpy as np

from parity.check.binding import Binder, BoundLayer, argument_equal_to
from parity.check.layercalls import LayerCall
from parity.check.loader import Impl
from parity.check.members import resolve_methods
from parity.check.names import Choice, ImplError, LayerMisbehaves, Missing, NamesError
from parity.check.usercode import DEFAULT_TIMEOUT, ImplCrash, guarded
from scratch.spec import NetworkSpec, parse_spec

TUTORIAL_FILTERS = 8  # Conv3x3(8), as the tutorial constructs it


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
        index = next(i for i, (a, b) in enumerate(zip(rebuilt.layers, arch.layers, strict=False)) if a.item != b.item)
        layer = arch.layers[index]
        raise LayerMisbehaves(
            f"{arch.impl.label}: at {size} the layers act as {rebuilt.spec.text}, not {arch.spec.text} as at "
            f"{'x'.join(map(str, arch.spec.image_shape))}",
            layer.cls_name,
            layer.methods.forward,
            arch.spec.layers[index].name,
            f"acts as {rebuilt.layers[index].item} at {size}, not {layer.item} as at "
            f"{'x'.join(map(str, arch.spec.image_shape))}",
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
    position = argument_equal_to(last.call, units)
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
        obj = construct(impl, call, layer_name, position, timeout)
        binder = Binder(impl, call, obj, methods[call.cls], layer_name, timeout, position)
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


def construct(
    impl: Impl, call: LayerCall, layer: str, index: int | None = None, timeout: float | None = DEFAULT_TIMEOUT
):
    """`call`'s object; NamesError (with the constructor's parameters) when the class does not take those arguments
    (a TypeError); ImplCrash for any other error, or a constructor that runs past `timeout`."""
    cls = impl.classes[call.cls]
    shown = LayerCall(cls.__name__, call.args, call.kwargs).text()
    try:
        return guarded(cls.__name__, "__init__", layer, lambda: cls(*call.args, **dict(call.kwargs)), timeout=timeout)
    except ImplCrash as crash:
        if crash.timed_out or not isinstance(crash.__cause__, TypeError) or _takes(cls, call):
            raise  # a constructor that hangs, or fails on what it does (a file it loads), is no argument mismatch
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


def _takes(cls: type, call: LayerCall) -> bool:
    """Whether `cls`'s constructor accepts `call`'s arguments (then a TypeError it raised came from its body)."""
    try:
        inspect.signature(cls).bind(*call.args, **dict(call.kwargs))
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): the TypeError is taken as a mismatch, as before
        return False
    return True
