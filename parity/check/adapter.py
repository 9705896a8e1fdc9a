"""`TutorialSide`: drive tutorial-interface layers exactly as the tutorial's `train()` does, for the lockstep engine.

The tutorial's classes are the spec `conv3x{F},pool2,dense{classes}` (`tutorial_spec`): `Conv3x3` is `conv1`,
`MaxPool2` is `pool1`, and `Softmax` is `dense1` followed by the softmax of the loss. One step, as in the tutorial::

    out = conv.forward((image / 255) - 0.5); out = pool.forward(out); out = softmax.forward(out)
    loss = -np.log(out[label]); gradient = np.zeros(10); gradient[label] = -1 / out[label]
    gradient = softmax.backprop(gradient, lr); gradient = pool.backprop(gradient)
    gradient = conv.backprop(gradient, lr)

The user's code is per sample (HWC activations, weights (in, out), as scratch keeps them); this adapter is the one
place that adds the batch axis of 1 the engine's scratch layouts have (and takes it off the images). What the
engine gets, under the spec's names:
- seen directly: `conv1.out`, `pool1.out`, `probs` (forward return values), `dense1.d_in`, `pool1.d_in` (backprop
  return values), `conv1.d_in` (the conv's return value: dL/d(normalised image), shaped `(1, H, W, 1)`; missing
  when it returns None, as the tutorial's does), `dense1.out` (`Softmax.last_totals`, when cached);
- computed as `train()` does: `loss` = -log(out[label]);
- recovered from the in-place SGD update: `conv1.d_filters`, `dense1.d_weights`, `dense1.d_biases` =
  (before - after) / lr, and `dense1.d_out` = the recovered bias gradient (dL/dbiases = dL/dlogits).

Recovery precision: `after = fl(before - fl(lr * g))`, so `(before - after) / lr` is off by at most half an ulp of
`after` divided by lr, plus ~2 eps relative: |error| <= eps/2 * |w| / lr + 2 eps |g|. For float64 at lr 0.005 that
is ~2.2e-14 * |w|: ~1e-14 for filters (|w| < ~0.5), ~1e-16 for dense weights and biases, 100x inside the float64
tolerance (atol 1e-12 + rtol 1e-10 * |reference|). It grows with |w| / lr: the large-logit probe therefore raises
the logits through weights of ~4 (error ~1e-13), not through biases of ~800 (error ~2e-11, over the atol).

Because the update happens inside `backprop`, `update(lr)` is a no-op that only checks the lr is the one used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from parity.check.loader import ImplError, TutorialImpl
from parity.lockstep.feed import LayerFeed
from scratch.spec import NetworkSpec, parse_spec

# The spec layer each tutorial class implements, and back; the softmax of the loss (`probs`, layer `loss`) is
# computed by the user's Softmax too.
SPEC_LAYER = {"Conv3x3": "conv1", "MaxPool2": "pool1", "Softmax": "dense1"}
TUTORIAL_CLASS = {"conv1": "Conv3x3", "pool1": "MaxPool2", "dense1": "Softmax", "loss": "Softmax"}
PARAMETER_ATTRIBUTES = {  # spec parameter name -> (tutorial class, its attribute)
    "conv1.filters": ("Conv3x3", "filters"),
    "dense1.weights": ("Softmax", "weights"),
    "dense1.biases": ("Softmax", "biases"),
}
LAYOUTS = {"conv1.filters": "(num_filters, 3, 3)", "dense1.weights": "(input_len, nodes)", "dense1.biases": "(nodes,)"}
GRADIENT_OF = {
    "conv1.filters": "conv1.d_filters",
    "dense1.weights": "dense1.d_weights",
    "dense1.biases": "dense1.d_biases",
}
# The tutorial member each tensor comes out of (mapped to the user's names in `TutorialSide.origin`).
ORIGIN = {
    "conv1.out": "Conv3x3.forward",
    "pool1.out": "MaxPool2.forward",
    "dense1.out": "Softmax.last_totals",
    "probs": "Softmax.forward",
    "loss": "Softmax.forward",
    "dense1.d_out": "Softmax.backprop",
    "dense1.d_weights": "Softmax.backprop",
    "dense1.d_biases": "Softmax.backprop",
    "dense1.d_in": "Softmax.backprop",
    "pool1.d_in": "MaxPool2.backprop",
    "conv1.d_filters": "Conv3x3.backprop",
    "conv1.d_in": "Conv3x3.backprop",
    "conv1.filters": "Conv3x3.backprop",
    "dense1.weights": "Softmax.backprop",
    "dense1.biases": "Softmax.backprop",
}


def tutorial_spec(image_shape: tuple[int, int] = (28, 28), num_filters: int = 8, num_classes: int = 10) -> NetworkSpec:
    """The spec the tutorial's three classes implement: `conv3x{num_filters},pool2,dense{num_classes}`."""
    return parse_spec(f"conv3x{num_filters},pool2,dense{num_classes}", tuple(image_shape), num_classes)


class ImplCrash(Exception):
    """The user's code raised (or returned something unusable) during a step; one line, class and method named.

    `cls` is the tutorial class (`Softmax`), `layer` the spec layer it implements (`dense1`), which a crash blames.
    """

    def __init__(self, cls: str, method: str, message: str) -> None:
        super().__init__(f"{cls}.{method}: {message}")
        self.cls, self.method, self.detail = cls, method, message
        self.layer = SPEC_LAYER[cls]


class TutorialSide:
    """A lockstep `Side` around fresh instances of a `TutorialImpl`'s classes, holding `initial`'s weights.

    `initial` is keyed by spec parameter name; the spec (`self.spec`) is `tutorial_spec` with the number of
    filters and classes of those arrays.
    """

    def __init__(
        self,
        impl: TutorialImpl,
        initial: dict[str, np.ndarray],
        image_shape: tuple[int, int],
        lr: float,
    ) -> None:
        self.impl, self.lr, self.image_shape = impl, float(lr), tuple(image_shape)
        self.num_filters = num_filters = initial["conv1.filters"].shape[0]
        input_len, self.num_classes = initial["dense1.weights"].shape
        self.spec = tutorial_spec(self.image_shape, num_filters, self.num_classes)
        state = np.random.get_state()  # the tutorial's constructors draw from the global RNG: leave it as it was
        try:
            self.conv = self._construct("Conv3x3", num_filters)
            self.pool = self._construct("MaxPool2")
            self.softmax = self._construct("Softmax", input_len, self.num_classes)
        finally:
            np.random.set_state(state)
        self.layers = {"Conv3x3": self.conv, "MaxPool2": self.pool, "Softmax": self.softmax}
        for name, (layer, attribute) in PARAMETER_ATTRIBUTES.items():
            self._check_parameter(name, layer, attribute, initial[name])
        self.load_parameters(initial)
        self.missing: dict[str, str] = {}  # tensor -> why it could not be seen (filled by the first step)

    # --- the lockstep Side interface ---------------------------------------------------------------

    def forward_backward(
        self, images: np.ndarray, labels: np.ndarray, names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """One tutorial `train()` step on a batch of one: every tensor it exposes (whatever `names` asks for),
        gradients recovered from the update, in scratch layouts with the batch axis."""
        images, labels = np.asarray(images), np.asarray(labels).reshape(-1)
        if images.ndim == 2:
            images = images[np.newaxis]
        if images.shape[0] != 1 or labels.shape != (1,):
            raise ValueError(
                f"the tutorial's train() steps one image at a time: expected images (1, H, W) and labels (1,), "
                f"got {images.shape} and {labels.shape}"
            )
        image, label = images[0], int(labels[0])
        before = self.parameters()
        with np.errstate(all="ignore"):  # overflow shows up as a non-finite tensor in the comparison
            x = (image / 255) - 0.5
            height, width = x.shape
            conv_shape = (height - 2, width - 2, self.num_filters)
            pool_shape = ((height - 2) // 2, (width - 2) // 2, self.num_filters)
            out = self._call("Conv3x3", "forward", x)
            conv_out = self._checked("Conv3x3", "forward", out, conv_shape, "HWC (h - 2, w - 2, num_filters)")
            out = self._call("MaxPool2", "forward", out)
            pool_out = self._checked("MaxPool2", "forward", out, pool_shape, "HWC (h // 2, w // 2, num_filters)")
            out = self._call("Softmax", "forward", out)
            probs = self._checked("Softmax", "forward", out, (self.num_classes,), "(nodes,)")
            logits = getattr(self.softmax, self._name("Softmax.last_totals"), None)
            loss = -np.log(out[label])
            gradient = np.zeros(self.num_classes)
            gradient[label] = -1 / out[label]
            gradient = self._call("Softmax", "backprop", gradient, self.lr)
            d_pool_out = self._checked("Softmax", "backprop", gradient, pool_shape, "the shape of its input")
            gradient = self._call("MaxPool2", "backprop", gradient)
            d_conv_out = self._checked("MaxPool2", "backprop", gradient, conv_shape, "the shape of its input")
            gradient = self._call("Conv3x3", "backprop", gradient, self.lr)
            if gradient is not None:
                gradient = self._checked("Conv3x3", "backprop", gradient, x.shape, "the image's shape, or None")
            after = self.parameters()
            tensors = {
                "conv1.out": conv_out[np.newaxis],
                "pool1.out": pool_out[np.newaxis],
                "probs": probs[np.newaxis],
                "loss": np.asarray(loss, dtype=np.float64),
                "dense1.d_in": d_pool_out[np.newaxis],
                "pool1.d_in": d_conv_out[np.newaxis],
            }
            for name, gradient_name in GRADIENT_OF.items():
                tensors[gradient_name] = _recovered(before[name], after[name], self.lr)
        biases = tensors["dense1.d_biases"]
        # dL/dlogits of a batch of one is the bias gradient; a shape the update changed is left for the comparison.
        tensors["dense1.d_out"] = biases[np.newaxis].copy() if biases.ndim == 1 else biases.copy()
        self.missing = {}
        if isinstance(logits, np.ndarray) and logits.shape == (self.num_classes,):
            tensors["dense1.out"] = logits[np.newaxis].copy()
        else:
            self.missing["dense1.out"] = (
                f"{self._name('Softmax')} caches no {self._name('Softmax.last_totals')} of shape ({self.num_classes},)"
            )
        if gradient is None:
            self.missing["conv1.d_in"] = f"{self._name('Conv3x3')}.{self._name('Conv3x3.backprop')} returned None"
        else:
            tensors["conv1.d_in"] = gradient.reshape(1, height, width, 1)
        return {name: tensors[name] for name in self.spec.tensor_names if name in tensors}

    def run_layer(self, feed: LayerFeed) -> dict[str, np.ndarray]:
        """One tutorial class alone, on the reference's input, output gradient and weights (see
        `parity.lockstep.local`); gradients recovered from its update, then its own weights put back."""
        own = self.parameters()
        names = {param: f"{feed.layer.name}.{param}" for param in feed.params}
        try:
            self.load_parameters({**own, **{names[param]: value for param, value in feed.params.items()}})
            with np.errstate(all="ignore"):  # overflow shows up as a non-finite tensor in the comparison
                tensors = getattr(self, f"_alone_{feed.layer.kind}")(feed)
            after = self.parameters()
            for param, name in names.items():
                tensors[f"{feed.layer.name}.d_{param}"] = _recovered(feed.params[param], after[name], self.lr)
        finally:
            self.load_parameters(own)
        if feed.layer.kind == "dense" and tensors["dense1.d_biases"].ndim == 1:
            tensors["dense1.d_out"] = tensors["dense1.d_biases"][np.newaxis].copy()
        return tensors

    def _alone_conv(self, feed: LayerFeed) -> dict[str, np.ndarray]:
        x = feed.inputs[0, :, :, 0]
        shape = (x.shape[0] - 2, x.shape[1] - 2, self.num_filters)
        out = self._checked("Conv3x3", "forward", self._call("Conv3x3", "forward", x), shape, "HWC")
        gradient = self._call("Conv3x3", "backprop", feed.d_out[0], self.lr)
        tensors = {"conv1.out": out[np.newaxis]}
        if gradient is not None:
            gradient = self._checked("Conv3x3", "backprop", gradient, x.shape, "the image's shape, or None")
            tensors["conv1.d_in"] = gradient.reshape(1, *x.shape, 1)
        return tensors

    def _alone_pool(self, feed: LayerFeed) -> dict[str, np.ndarray]:
        x = feed.inputs[0]
        shape = (x.shape[0] // 2, x.shape[1] // 2, x.shape[2])
        out = self._checked("MaxPool2", "forward", self._call("MaxPool2", "forward", x), shape, "HWC")
        gradient = self._call("MaxPool2", "backprop", feed.d_out[0])
        d_in = self._checked("MaxPool2", "backprop", gradient, x.shape, "the shape of its input")
        return {"pool1.out": out[np.newaxis], "pool1.d_in": d_in[np.newaxis]}

    def _alone_dense(self, feed: LayerFeed) -> dict[str, np.ndarray]:
        x, label = feed.inputs[0], int(feed.labels[0])
        out = self._call("Softmax", "forward", x)
        probs = self._checked("Softmax", "forward", out, (self.num_classes,), "(nodes,)")
        logits = getattr(self.softmax, self._name("Softmax.last_totals"), None)
        gradient = np.zeros(self.num_classes)
        gradient[label] = -1 / probs[label]  # as train() starts backprop: from the layer's own probabilities
        d_in = self._checked(
            "Softmax", "backprop", self._call("Softmax", "backprop", gradient, self.lr), x.shape, "its input's shape"
        )
        tensors = {
            "probs": probs[np.newaxis],
            "loss": np.asarray(-np.log(probs[label])),
            "dense1.d_in": d_in[np.newaxis],
        }
        if isinstance(logits, np.ndarray) and logits.shape == (self.num_classes,):
            tensors["dense1.out"] = logits[np.newaxis].copy()
        return tensors

    def update(self, lr: float) -> None:
        """No-op: the tutorial's `backprop` already applied SGD at the same lr (checked)."""
        if float(lr) != self.lr:
            raise ValueError(f"lr {lr} differs from the lr {self.lr} this side passes to backprop")

    def parameters(self) -> dict[str, np.ndarray]:
        """Copies of the live parameters, under the spec's names."""
        return {
            name: _copy(getattr(self.layers[layer], self._name(f"{layer}.{attribute}")))
            for name, (layer, attribute) in PARAMETER_ATTRIBUTES.items()
        }

    def load_parameters(self, params: dict[str, np.ndarray]) -> None:
        """Set each parameter attribute to a copy of `params[name]` (spec names)."""
        for name, (layer, attribute) in PARAMETER_ATTRIBUTES.items():
            setattr(self.layers[layer], self._name(f"{layer}.{attribute}"), np.array(params[name], copy=True))

    # --- provenance, for reports ----------------------------------------------------------------------

    def origin(self, tensor: str) -> str:
        """The user's class and member a tensor comes out of, in the user's names: `MaxPool2.backprop`."""
        key = ORIGIN[tensor]
        return f"{self._name(key.split('.')[0])}.{self._name(key)}"

    def provenance(self) -> dict[str, str]:
        """How each tensor was obtained from the implementation (or why it was not), in spec order."""
        c, p, s = (self._name(layer) for layer in ("Conv3x3", "MaxPool2", "Softmax"))
        how = {
            "conv1.out": f"{self.origin('conv1.out')} return value",
            "pool1.out": f"{self.origin('pool1.out')} return value",
            "dense1.out": f"{self.origin('dense1.out')} (cached by forward)",
            "probs": f"{self.origin('probs')} return value",
            "loss": "-log(probs[label]), as train() computes it",
            "dense1.d_out": "recovered from the bias update: dL/dlogits = dL/dbiases = (before - after) / lr",
            "dense1.d_weights": f"recovered from the update of {s}.{self._name('Softmax.weights')}: "
            "(before - after) / lr",
            "dense1.d_biases": f"recovered from the update of {s}.{self._name('Softmax.biases')}: "
            "(before - after) / lr",
            "dense1.d_in": f"{s}.{self._name('Softmax.backprop')} return value",
            "pool1.d_in": f"{p}.{self._name('MaxPool2.backprop')} return value",
            "conv1.d_filters": f"recovered from the update of {c}.{self._name('Conv3x3.filters')}: "
            "(before - after) / lr",
            "conv1.d_in": f"{c}.{self._name('Conv3x3.backprop')} return value (dL/d normalised image)",
        }
        for name, why in self.missing.items():
            how[name] = f"not compared: {why}"
        return {name: how[name] for name in self.spec.tensor_names if name in how}

    # --- helpers ----------------------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self.impl.mapping.name(key)

    def _construct(self, layer: str, *args: int):
        cls = self.impl.classes[layer]
        call = f"{cls.__name__}({', '.join(map(str, args))})"
        try:
            return cls(*args)
        except Exception as error:  # the user's constructor is arbitrary code
            raise ImplError(
                f"{self.impl.label}: {call} raised {_one_line(error)} (constructed as in the tutorial)"
            ) from None

    def _check_parameter(self, name: str, layer: str, attribute: str, want: np.ndarray) -> None:
        instance = self.layers[layer]
        attr = self._name(f"{layer}.{attribute}")
        cls = type(instance).__name__
        if not hasattr(instance, attr):
            raise ImplError(
                f"{self.impl.label}: {cls} has no attribute {attr} after construction "
                f"(the tutorial keeps it there); pass --map {layer}.{attribute}=NAME if yours is named differently"
            )
        got = getattr(instance, attr)
        shape = getattr(got, "shape", None)
        if shape != want.shape:
            raise ImplError(
                f"{self.impl.label}: {cls}.{attr} has shape {shape}, expected {want.shape} as in the tutorial "
                f"({LAYOUTS[name]})"
            )

    def _checked(self, layer: str, method: str, value, shape: tuple[int, ...], layout: str) -> np.ndarray:
        """A private copy of a returned array, which must have the tutorial's shape (else ImplCrash)."""
        name = self._name(f"{layer}.{method}")
        if value is None:
            raise ImplCrash(layer, name, f"returned None, expected an array of shape {shape}: {layout}")
        array = _copy(value)
        if array.shape != shape:
            raise ImplCrash(layer, name, f"returned shape {array.shape}, expected {shape}: {layout}")
        return array

    def _call(self, layer: str, method: str, *args):
        name = self._name(f"{layer}.{method}")
        try:
            return getattr(self.layers[layer], name)(*args)
        except Exception as error:  # the user's code is arbitrary code
            raise ImplCrash(layer, name, f"raised {_one_line(error)}") from error


def _copy(value) -> np.ndarray:
    """A private copy of what the user's code returned (it may keep and later change its own arrays)."""
    return np.array(value, copy=True)


def _recovered(before: np.ndarray, after: np.ndarray, lr: float) -> np.ndarray:
    """The gradient an SGD step applied: (before - after) / lr."""
    if before.shape != after.shape:
        return after  # the update changed the shape; the comparison reports the shape mismatch
    return (before - after) / lr


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
