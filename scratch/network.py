"""The network built from a spec: layers in order, then softmax cross-entropy; every tensor of a step named.

`build_network("conv3x8,pool2,dense10")` is the tutorial. A step's tensors are named by `scratch.spec` and come in
the scratch layouts: NHWC activations with the batch first, `(in, out)` dense weights, `(F, K, K[, C])` filters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scratch._checks import (
    check_choice,
    check_dtype,
    check_images,
    check_labels,
    check_lr,
    check_seed,
    whole_number,
)
from scratch.conv import Conv, ConvLoops
from scratch.dense import Dense, DenseLoops
from scratch.layer import Layer
from scratch.loss import SoftmaxCrossEntropy
from scratch.maxpool import TIE_POLICIES, MaxPool, MaxPoolLoops
from scratch.relu import ReLU, ReLULoops
from scratch.spec import DEFAULT_SPEC, LayerSpec, NetworkSpec, check_image_shape, parse_spec

IMPLEMENTATIONS = ("vectorized", "loops")
# One class per layer kind and implementation: adding a kind is one line here.
LAYER_CLASSES: dict[str, dict[str, type[Layer]]] = {
    "vectorized": {"conv": Conv, "relu": ReLU, "pool": MaxPool, "dense": Dense},
    "loops": {"conv": ConvLoops, "relu": ReLULoops, "pool": MaxPoolLoops, "dense": DenseLoops},
}


@dataclass
class StepTrace:
    """One forward + backward pass: every named tensor in spec order, the tied windows per pool, the hits."""

    tensors: dict[str, np.ndarray]
    tied_windows: dict[str, int]
    correct: int  # how many samples of the batch the network classified right

    @property
    def loss(self) -> float:
        """The mean cross-entropy loss of the step."""
        return float(self.tensors["loss"])


class Network:
    """Layers from a spec, then the loss; backward is separate from the SGD update."""

    def __init__(self, spec: NetworkSpec, layers: list[Layer], loss: SoftmaxCrossEntropy, dtype: np.dtype) -> None:
        self.spec, self.layers, self.loss, self.dtype = spec, layers, loss, np.dtype(dtype)
        for layer in layers:
            layer.check_finite = False  # `normalize` checks the images; see Layer.check_finite
        self.image_shape = spec.image_shape
        self.num_classes = spec.num_classes
        self._named = list(zip(spec.layers, layers, strict=True))
        # Each layer's tensor names, from the spec's TensorInfos, made once: (layer, output name, [(param, gradient
        # name)], input-gradient name). Filled forward, then backward in reverse, a trace is in the spec's order.
        by_role = {(info.layer, info.role, info.param): info.name for info in spec.tensors}
        self._steps = [
            (
                layer,
                by_role[(layer_spec.name, "out", "")],
                [(param, by_role[(layer_spec.name, "d_param", param)]) for param, _ in layer_spec.params],
                by_role[(layer_spec.name, "d_in", "")],
            )
            for layer_spec, layer in self._named
        ]
        self._loss_gradient = by_role[(spec.layers[-1].name, "d_out", "")]
        self._pools = [(layer_spec.name, layer) for layer_spec, layer in self._named if layer_spec.kind == "pool"]

    def layer(self, name: str) -> Layer:
        """The layer object called `name` (`conv1`, `pool1`, ...); KeyError naming the layers there are."""
        self.spec.layer(name)  # KeyError with the spec's layer names
        return dict((layer_spec.name, layer) for layer_spec, layer in self._named)[name]

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """The tutorial's `image / 255 - 0.5` in the network's dtype, as an `(N, H, W, 1)` batch."""
        images = check_images(images, self.image_shape)
        x = images.astype(self.dtype)  # a new array: the two steps below work in place on it
        x /= self.dtype.type(255)
        x -= self.dtype.type(0.5)
        return x.reshape(*x.shape, 1)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """The logits `(N, classes)` of raw images `(H, W)` or `(N, H, W)`."""
        out = self.normalize(images)
        for layer in self.layers:
            out = layer.forward(out)
        return out

    def evaluate(self, images: np.ndarray, labels: object) -> tuple[float, int]:
        """Mean loss and the number classified right, without backward."""
        logits = self.logits(images)  # the images first: how many labels are wanted depends on them
        labels = check_labels(labels, self.num_classes, images)
        probs, loss = self.loss.forward(logits, labels)
        return float(loss), int(np.count_nonzero(probs.argmax(axis=1) == labels))

    def forward_backward(self, images: np.ndarray, labels: object, full: bool = True) -> StepTrace:
        """Forward and backward on one image or a batch; every named tensor in the trace, no weight moved. Not
        `full`: all but the gradient of the image itself, and no tied windows counted (what training needs)."""
        return self._forward_backward(images, labels, full=full)

    def _forward_backward(self, images: np.ndarray, labels: object, full: bool) -> StepTrace:
        """`forward_backward`; not `full`, only what the SGD update needs: the first layer computes only its
        parameter gradients (the trace lacks its input gradient) and no tied windows are counted."""
        out = self.normalize(images)  # the images first: how many labels are wanted depends on them
        labels = check_labels(labels, self.num_classes, images)
        tensors: dict[str, np.ndarray] = {}  # filled in the spec's order: forward, loss, backward
        for layer, out_name, _, _ in self._steps:
            out = layer.forward(out)
            tensors[out_name] = out
        probs, loss = self.loss.forward(out, labels)
        tensors["probs"], tensors["loss"] = probs, loss
        gradient = self.loss.backward()
        tensors[self._loss_gradient] = gradient
        for index in range(len(self._steps) - 1, -1, -1):
            layer, _, param_gradients, in_gradient = self._steps[index]
            if index == 0 and not full:
                if param_gradients:
                    layer.parameter_backward(gradient)
            else:
                gradient = layer.backward(gradient)
            for param, name in param_gradients:
                tensors[name] = layer.grads[param]
            if index or full:
                # dL/d(normalised image) for the first layer; dL/d(raw pixel) is this / 255.
                tensors[in_gradient] = gradient
        ties = {name: layer.tied_windows for name, layer in self._pools} if full else {}
        return StepTrace(tensors, ties, int(np.count_nonzero(probs.argmax(axis=1) == labels)))

    def update(self, lr: float) -> None:
        """Apply SGD to every layer from the gradients of the last backward."""
        lr = check_lr(lr)
        # Every layer's gradients must be there before any weight moves (one updated alone has used its own up).
        spent = next((layer for layer in self.layers if layer.param_names and not layer.grads), None)
        if spent is not None:
            spent.update(lr)  # refuses, naming the layer and what to do
        self._apply(lr)

    def _apply(self, lr: float) -> None:
        for layer in self.layers:
            layer.update(lr)

    def train_step(self, images: np.ndarray, labels: object, lr: float = 0.005) -> tuple[float, int]:
        """One SGD step on one image or a batch; (mean loss, number right). Bad input raises before any update.

        Neither the gradient of the image itself nor the tied pool windows are computed: no weight needs them (nor
        does PyTorch's autograd compute the gradient of an input that does not require grad)."""
        lr = check_lr(lr)
        trace = self._forward_backward(images, labels, full=False)
        self._apply(lr)  # every gradient was just made
        return trace.loss, trace.correct

    def parameters(self) -> dict[str, np.ndarray]:
        """Live parameter arrays under their spec names (`conv1.filters`, `dense1.weights`, ...)."""
        return {
            f"{layer_spec.name}.{param}": getattr(layer, param)
            for layer_spec, layer in self._named
            for param, _ in layer_spec.params
        }

    def load_parameters(self, params: dict[str, np.ndarray]) -> None:
        """Copy parameters in place; every name must be there, shapes and dtypes must match exactly."""
        current = self.parameters()
        missing = [name for name in current if name not in params]
        unknown = [name for name in params if name not in current]
        if missing or unknown:
            problems = [f"missing {', '.join(missing)}"] * bool(missing) + [f"unknown {', '.join(unknown)}"] * bool(
                unknown
            )
            raise ValueError(f"parameters: {'; '.join(problems)} (expected {', '.join(current)})")
        for name, array in current.items():
            new = params[name]
            if not isinstance(new, np.ndarray) or new.shape != array.shape or new.dtype != array.dtype:
                got = f"{new.shape} {new.dtype}" if isinstance(new, np.ndarray) else type(new).__name__
                raise ValueError(f"{name}: expected shape {array.shape} {array.dtype}, got {got}")
        # A source sharing memory with a live parameter (another's, swapped in) is copied before any is written.
        live = list(current.values())
        sources = {name: _unshared(params[name], live) for name in current}
        for name, array in current.items():
            array[...] = sources[name]


def _unshared(value: np.ndarray, live: list[np.ndarray]) -> np.ndarray:
    """`value`, or a copy of it where it shares memory with one of the `live` arrays about to be written."""
    return np.array(value) if any(np.may_share_memory(value, array) for array in live) else value


def build_network(
    spec: str | NetworkSpec = DEFAULT_SPEC,
    seed: int = 0,
    dtype: object = np.float64,
    image_shape: tuple[int, int] | None = None,
    tie_policy: str = "first",
    softmax: str = "stable",
    impl: str = "vectorized",
    num_classes: int | None = None,
) -> Network:
    """Build the network `spec` describes, initialised from one seeded Generator in layer order.

    The tutorial's initialisation, generalised: conv filters randn / (K*K), dense weights randn / fan_in, zero biases.
    """
    dtype = check_dtype(dtype)
    seed = check_seed(seed)
    impl = check_choice("impl", impl, IMPLEMENTATIONS)
    tie_policy = check_choice("tie_policy", tie_policy, TIE_POLICIES)  # also for a spec without a pool
    if not isinstance(spec, NetworkSpec):
        classes = 10 if num_classes is None else num_classes  # `or 10` would turn 0 into 10 silently
        spec = parse_spec(spec, (28, 28) if image_shape is None else image_shape, classes)
    elif image_shape is not None and check_image_shape(image_shape) != spec.image_shape:
        raise ValueError(f"image_shape: {image_shape} given, but the spec was parsed for {spec.image_shape}")
    elif num_classes is not None and num_classes != spec.num_classes:
        raise ValueError(f"num_classes: {num_classes} given, but the spec has {spec.num_classes} classes")
    rng = np.random.default_rng(seed)
    layers = [_build_layer(layer, LAYER_CLASSES[impl][layer.kind], rng, dtype, tie_policy) for layer in spec.layers]
    return Network(spec, layers, SoftmaxCrossEntropy(softmax), dtype)


def _build_layer(layer: LayerSpec, cls: type[Layer], rng: np.random.Generator, dtype, tie_policy) -> Layer:
    if layer.kind == "conv":
        return cls(layer.kernel, layer.units, layer.in_shape[2], layer.bias, rng=rng, dtype=dtype)
    if layer.kind == "pool":
        return cls(layer.kernel, tie_policy=tie_policy)
    if layer.kind == "dense":
        return cls(layer.fan_in, layer.units, rng=rng, dtype=dtype)
    return cls()


def tutorial_network(
    seed: int = 0,
    dtype: object = np.float64,
    *,
    num_filters: int = 8,
    image_shape: tuple[int, int] = (28, 28),
    num_classes: int = 10,
    tie_policy: str = "first",
    softmax: str = "stable",
    impl: str = "vectorized",
) -> Network:
    """The tutorial's CNN: exactly `build_network("conv3x{num_filters},pool2,dense{num_classes}")`."""
    filters, classes = whole_number(num_filters), whole_number(num_classes)
    if filters is None or filters < 1:
        raise ValueError(f"num_filters: expected a positive integer, got {num_filters!r}")
    if classes is None or classes < 2:
        raise ValueError(f"num_classes: expected an integer >= 2, got {num_classes!r}")
    spec = f"conv3x{filters},pool2,dense{classes}"
    return build_network(spec, seed, dtype, image_shape, tie_policy, softmax, impl, classes)
