"""The network spec: one description of a sequential CNN, parsed once; shapes and tensor names come from here.

Text form, comma-separated (the tutorial is `conv3x8,pool2,dense10`):
- `conv{K}x{F}`: K x K kernel, F filters, valid padding, stride 1, no bias (the tutorial's conv); `conv{K}x{F}b`
  with a bias. Its channels are those of what precedes it (1 for the image).
- `relu`.
- `pool{K}`: K x K max-pool, stride K; odd sizes floor (the leftover rows and columns get no gradient).
- `dense{N}`: N units with a bias; the input is flattened first, in HWC order, as the tutorial does.
The last layer is a dense whose outputs are the logits, followed by softmax cross-entropy.

Layers are named by kind and count (`conv1`, `relu1`, `pool1`, `conv2`, `dense1`). Every tensor a step produces is
named here, in the order a divergence is looked for: each layer's output in forward order, the probabilities and
the loss, then backward in reverse layer order (the loss gradient at the logits, then per layer its parameter
gradients and the gradient at its input), then the parameters after the update. The gradient at a layer's output
is the gradient at the next layer's input, so it is named once, as that input's (`pool1.d_in` is also
`conv1`'s output gradient); only the last layer's output gradient, dL/dlogits, has a name of its own.

This module imports nothing but the standard library: scratch, the twin, the engine and the reports all read it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from scratch._checks import whole_number

DEFAULT_SPEC = "conv3x8,pool2,dense10"
KINDS = ("conv", "relu", "pool", "dense")
_ITEM = re.compile(
    r"conv(?P<conv_k>\d+)x(?P<filters>\d+)(?P<bias>b?)|relu|pool(?P<pool_k>\d+)|dense(?P<units>\d+)", re.ASCII
)  # ASCII: `\d` would also take full-width digits
_ITEM_FORMS = "conv{K}x{F}, conv{K}x{F}b, relu, pool{K}, dense{N}"
# The most elements a layer's parameter, or its output for one image, may hold: 50 million float64s are 400 MB, and
# the gradients, a batch and the twin's copy multiply that. Larger layers cannot train here; they are refused.
MAX_ELEMENTS = 50_000_000


@dataclass(frozen=True)
class TensorInfo:
    """One named tensor of a step: which layer makes it, of what kind, and what it is."""

    name: str  # e.g. `conv1.out`, `pool1.d_in`, `dense1.d_weights`, `loss`
    layer: str  # the layer's name, or `loss` for the probabilities and the loss
    kind: str  # the layer's kind (`conv`, `relu`, `pool`, `dense`) or `loss`
    role: str  # `out`, `probs`, `loss`, `d_out` (dL/dlogits), `d_param`, `d_in` or `param` (after the update)
    param: str = ""  # for `d_param` and `param`: the parameter's name (`filters`, `weights`, `biases`)

    @property
    def phase(self) -> str:
        """`forward`, `backward` or `update`: the three tiers a step is compared in."""
        if self.role in ("out", "probs", "loss"):
            return "forward"
        return "update" if self.role == "param" else "backward"


@dataclass(frozen=True)
class LayerSpec:
    """One layer: its kind and hyper-parameters, its name, and the shapes around it (per sample, HWC)."""

    kind: str
    name: str
    item: str  # the text it was parsed from
    in_shape: tuple[int, ...]  # (H, W, C) for conv/relu/pool after a conv; (N,) after a dense
    out_shape: tuple[int, ...]
    kernel: int = 0  # conv and pool
    units: int = 0  # conv: filters; dense: outputs
    bias: bool = False
    params: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (name, scratch-layout shape), in update order

    @property
    def fan_in(self) -> int:
        """Inputs per output unit: what the dense initialisation divides by."""
        return math.prod(self.in_shape)


@dataclass(frozen=True)
class NetworkSpec:
    """A parsed spec: the layers with their shapes, the image shape and the number of classes."""

    text: str
    layers: tuple[LayerSpec, ...]
    image_shape: tuple[int, int]
    num_classes: int
    _tensors: tuple[TensorInfo, ...] = field(default=(), compare=False, repr=False)
    _by_name: dict[str, TensorInfo] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Derived once: the lockstep asks for names and infos every step.
        object.__setattr__(self, "_tensors", _tensor_infos(self.layers))
        object.__setattr__(self, "_by_name", {info.name: info for info in self._tensors})
        object.__setattr__(self, "_names", tuple(self._by_name))
        last = self.layers[-1].name if self.layers else ""
        roles = {(last if i.layer == "loss" else i.layer, i.role, i.param): i.name for i in self._tensors}
        object.__setattr__(self, "_by_role", roles)

    @property
    def tensors(self) -> tuple[TensorInfo, ...]:
        """Every named tensor of a step, in comparison order (forward, loss, backward, parameters)."""
        return self._tensors

    @property
    def tensor_names(self) -> tuple[str, ...]:
        """The names of `tensors`, in order."""
        return self._names

    def tensor(self, name: str) -> TensorInfo:
        """The `TensorInfo` called `name`; KeyError for a name the spec does not make."""
        if name not in self._by_name:
            raise KeyError(f"{name!r} is not a tensor of {self.text} (tensors: {', '.join(self.tensor_names)})")
        return self._by_name[name]

    def layer(self, name: str) -> LayerSpec:
        """The layer called `name`."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"{name!r} is not a layer of {self.text}")

    def judged_at(self, name: str) -> str:
        """The layer a tensor is judged at: its own, or the last dense for the loss's (`probs`, `loss`), which a
        tutorial-style `Softmax` computes together with its dense part."""
        info = self.tensor(name)
        return self.layers[-1].name if info.layer == "loss" else info.layer

    def layer_tensors(self, layer: str) -> tuple[str, ...]:
        """Every tensor judged at `layer` (see `judged_at`), in comparison order."""
        return tuple(name for name in self.tensor_names if self.judged_at(name) == layer)

    def name_of(self, layer: str, role: str, param: str = "") -> str:
        """The name of the tensor of `layer` with `role` (and `param`): `name_of("conv1", "d_param", "filters")`."""
        name = self._by_role.get((layer, role, param))
        if name is not None:
            return name
        raise KeyError(f"{layer} of {self.text} has no tensor of role {role!r}{f' ({param})' if param else ''}")

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Every parameter as `layer.param`, in layer order: the names of the parameters after the update."""
        return tuple(f"{layer.name}.{param}" for layer in self.layers for param, _ in layer.params)

    def describe(self) -> list[tuple[str, str, str]]:
        """(layer, spec item, output shape) per layer, for a report's architecture table."""
        rows = [("image", "", "x".join(map(str, (*self.image_shape, 1))))]
        return rows + [(layer.name, layer.item, "x".join(map(str, layer.out_shape))) for layer in self.layers]


def parse_spec(text: str = DEFAULT_SPEC, image_shape: tuple[int, int] = (28, 28), num_classes: int = 10) -> NetworkSpec:
    """Parse a spec such as `conv3x8,pool2,dense10`; ValueError naming the bad item and the shape at that point."""
    if not isinstance(text, str):
        raise ValueError(f"network spec: expected text such as {DEFAULT_SPEC!r}, got {type(text).__name__}")
    image_shape = check_image_shape(image_shape)
    classes = whole_number(num_classes)
    if classes is None or classes < 2:
        raise ValueError(f"num_classes: expected an integer >= 2, got {num_classes!r}")
    num_classes = classes
    items = [item.strip() for item in text.split(",")]
    shape: tuple[int, ...] = (*image_shape, 1)
    counts = dict.fromkeys(KINDS, 0)
    layers = []
    for position, item in enumerate(items, start=1):
        layer = _parse_item(item, position, shape, counts)
        _check_size(layer, position, shape)
        layers.append(layer)
        shape = layer.out_shape
    last = layers[-1]
    if last.kind != "dense" or last.units != num_classes:
        raise ValueError(
            f"network spec {text!r}: must end in dense{num_classes} (the logits of {num_classes} classes, followed by "
            f"softmax cross-entropy); it ends in {last.item!r} with output {_shape_text(last.out_shape)}"
        )
    return NetworkSpec(",".join(items), tuple(layers), image_shape, num_classes)


def pools_can_tie(text: str) -> bool:
    """Whether a spec (its text; no shapes needed) has a max-pool whose windows hold more than one element, so that
    a tie rule plays a part (`pool1` passes every element on)."""
    return any(item.startswith("pool") and item != "pool1" for item in check_items(text).split(","))


def check_items(text: str, num_classes: int = 10) -> str:
    """Check a spec's items without shapes (for a command line, before the image size is known): every item known,
    every K, F and N at least 1, the last a dense of `num_classes`. Returns the canonical text; ValueError naming
    the item otherwise. `parse_spec` checks the shapes once the image size is known."""
    if not isinstance(text, str):
        raise ValueError(f"network spec: expected text such as {DEFAULT_SPEC!r}, got {type(text).__name__}")
    items = [item.strip() for item in text.split(",")]
    for position, item in enumerate(items, start=1):
        where = f"network spec item {position} {_shown(item)}"
        match = _ITEM.fullmatch(item)
        if match is None:
            raise ValueError(f"{where}: {'empty' if not item else 'unknown'} item; expected one of {_ITEM_FORMS}")
        _check_numbers(where, match)
    if not items[-1].startswith("dense") or items[-1] != f"dense{num_classes}":
        raise ValueError(
            f"network spec {text!r}: must end in dense{num_classes} (the logits of {num_classes} classes, followed by "
            f"softmax cross-entropy); it ends in {items[-1]!r}"
        )
    return ",".join(items)


def _parse_item(item: str, position: int, shape: tuple[int, ...], counts: dict[str, int]) -> LayerSpec:
    """One item, at `shape` (the output of what precedes it)."""
    where = f"network spec item {position} {_shown(item)} (input {_shape_text(shape)})"
    if not item:  # `conv3x8,,dense10`, a trailing comma, or no text at all
        raise ValueError(f"{where}: empty item; expected comma-separated {_ITEM_FORMS}")
    match = _ITEM.fullmatch(item)
    if match is None:
        raise ValueError(f"{where}: unknown item; expected one of {_ITEM_FORMS}")
    _check_numbers(where, match)
    kind = re.match(r"[a-z]+", item).group()
    counts[kind] += 1
    name = f"{kind}{counts[kind]}"
    if kind == "relu":
        return LayerSpec("relu", name, item, shape, shape)
    if kind == "dense":
        units = int(match["units"])
        _at_least(where, "units", units, 1)
        inputs = math.prod(shape)
        return LayerSpec(
            "dense", name, item, shape, (units,), units=units, bias=True,
            params=(("weights", (inputs, units)), ("biases", (units,))),
        )  # fmt: skip
    if len(shape) != 3:
        raise ValueError(f"{where}: a {kind} needs an image-shaped (H, W, C) input; a dense layer has flattened it")
    height, width, channels = shape
    kernel = int(match["conv_k"] or match["pool_k"])
    _at_least(where, "K", kernel, 1)
    if kernel > height or kernel > width:
        raise ValueError(f"{where}: a {kernel}x{kernel} {kind} does not fit; the input has shrunk below its kernel")
    if kind == "pool":
        return LayerSpec("pool", name, item, shape, (height // kernel, width // kernel, channels), kernel=kernel)
    filters, bias = int(match["filters"]), bool(match["bias"])
    _at_least(where, "F", filters, 1)
    # A single-channel conv keeps the tutorial's (F, K, K) filters; with channels, (F, K, K, C).
    filter_shape = (filters, kernel, kernel) if channels == 1 else (filters, kernel, kernel, channels)
    params = (("filters", filter_shape),) + ((("biases", (filters,)),) if bias else ())
    out_shape = (height - kernel + 1, width - kernel + 1, filters)
    return LayerSpec("conv", name, item, shape, out_shape, kernel=kernel, units=filters, bias=bias, params=params)


def _check_size(layer: LayerSpec, position: int, shape: tuple[int, ...]) -> None:
    """Refuse a layer whose parameters or output (per image) exceed MAX_ELEMENTS, before anything is allocated."""
    sizes = [(f"its {param}", math.prod(param_shape)) for param, param_shape in layer.params]
    for what, size in sizes + [("its output", math.prod(layer.out_shape))]:
        if size > MAX_ELEMENTS:
            raise ValueError(
                f"network spec item {position} {layer.item!r} (input {_shape_text(shape)}): {what} would hold "
                f"{size:,} elements, more than the {MAX_ELEMENTS:,} a layer may; use fewer units or filters, or "
                "smaller images"
            )


def _tensor_infos(layers: tuple[LayerSpec, ...]) -> tuple[TensorInfo, ...]:
    forward = [TensorInfo(f"{layer.name}.out", layer.name, layer.kind, "out") for layer in layers]
    loss = [TensorInfo("probs", "loss", "loss", "probs"), TensorInfo("loss", "loss", "loss", "loss")]
    last = layers[-1]
    backward = [TensorInfo(f"{last.name}.d_out", last.name, last.kind, "d_out")]
    for layer in reversed(layers):
        backward += [TensorInfo(f"{layer.name}.d_{p}", layer.name, layer.kind, "d_param", p) for p, _ in layer.params]
        backward.append(TensorInfo(f"{layer.name}.d_in", layer.name, layer.kind, "d_in"))
    update = [
        TensorInfo(f"{layer.name}.{p}", layer.name, layer.kind, "param", p) for layer in layers for p, _ in layer.params
    ]
    return tuple(forward + loss + backward + update)


def check_image_shape(image_shape: object) -> tuple[int, int]:
    """`(height, width)` as two Python ints (NumPy integers taken); ValueError otherwise."""
    sides = [whole_number(side) for side in image_shape] if isinstance(image_shape, (tuple, list, np.ndarray)) else []
    if len(sides) != 2 or not all(side is not None and side >= 1 for side in sides):
        raise ValueError(f"image_shape: expected (height, width) as two positive integers, got {image_shape!r}")
    return tuple(sides)


# Numbers longer than this are refused as written; shorter ones too large get `_check_size`'s message, in elements.
MAX_DIGITS = 18


def _check_numbers(where: str, match: re.Match) -> None:
    """Every number of an item at least 1, and written without a leading zero: `dense010` would be the tutorial's
    network under a name no report or record of it has."""
    for what, group in (("K", "conv_k"), ("F", "filters"), ("K", "pool_k"), ("units", "units")):
        written = match[group]
        if written is None:
            continue
        if len(written) > MAX_DIGITS:  # Python refuses to read an int of over 4,300 digits at all
            raise ValueError(f"{where}: {what} has {len(written):,} digits, beyond any layer that fits")
        if len(written) > 1 and written.startswith("0") and int(written) >= 1:  # 00: "at least 1" says more
            raise ValueError(f"{where}: {what} is written with a leading zero; write {int(written)}, not {written}")
        _at_least(where, what, int(written), 1)


def _at_least(where: str, what: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{where}: {what} must be at least {low}, got {value}")


def _shown(item: str) -> str:
    """The item quoted, cut short past 40 characters (a message stays one readable line)."""
    return repr(item if len(item) <= 40 else item[:37] + "...")


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))
