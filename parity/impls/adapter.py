"""`TutorialSide`: drive tutorial-interface layers exactly as the tutorial's `train()` does, for the lockstep engine.

One step, as in the tutorial::

    out = conv.forward((image / 255) - 0.5); out = pool.forward(out); out = softmax.forward(out)
    loss = -np.log(out[label]); gradient = np.zeros(10); gradient[label] = -1 / out[label]
    gradient = softmax.backprop(gradient, lr); gradient = pool.backprop(gradient)
    gradient = conv.backprop(gradient, lr)

What the engine gets, in scratch's names and layouts (the tutorial's own layouts: HWC, weights (in, out)):
- seen directly: `conv_out`, `pool_out`, `probs` (forward return values), `d_pool_out`, `d_conv_out` (backprop
  return values), `d_image` (the conv's return value: dL/d(normalised image), what scratch and the reference
  call `d_image`; missing when it returns None, as the tutorial's does), `logits` (`Softmax.last_totals`, when cached);
- computed as `train()` does: `loss` = -log(out[label]);
- recovered from the in-place SGD update: `d_filters`, `d_dense_weights`, `d_dense_biases` = (before - after) / lr,
  and `d_logits` = the recovered bias gradient (dL/dbiases = dL/dlogits).

Recovery precision: `after = fl(before - fl(lr * g))`, so `(before - after) / lr` is off by at most half an ulp of
`after` divided by lr, plus ~2 eps relative: |error| <= eps/2 * |w| / lr + 2 eps |g|. For float64 at lr 0.005 that
is ~2.2e-14 * |w|: ~1e-14 for filters (|w| < ~0.5), ~1e-16 for dense weights and biases, 100x inside the float64
tolerance (atol 1e-12 + rtol 1e-10 * |reference|). It grows with |w| / lr: the large-logit probe therefore raises
the logits through weights of ~4 (error ~1e-13), not through biases of ~800 (error ~2e-11, over the atol).

Because the update happens inside `backprop`, `update(lr)` is a no-op that only checks the lr is the one used.
"""

from __future__ import annotations

import numpy as np

from parity.impls.loader import ImplError, TutorialImpl

PARAMETER_ATTRIBUTES = {  # scratch's parameter name -> (layer, tutorial attribute)
    "filters": ("Conv3x3", "filters"),
    "dense_weights": ("Softmax", "weights"),
    "dense_biases": ("Softmax", "biases"),
}
LAYOUTS = {"filters": "(num_filters, 3, 3)", "dense_weights": "(input_len, nodes)", "dense_biases": "(nodes,)"}
GRADIENT_OF = {"filters": "d_filters", "dense_weights": "d_dense_weights", "dense_biases": "d_dense_biases"}


class ImplCrash(Exception):
    """The user's code raised (or returned something unusable) during a step; one line, layer and method named."""

    def __init__(self, layer: str, method: str, message: str) -> None:
        super().__init__(f"{layer}.{method}: {message}")
        self.layer, self.method, self.detail = layer, method, message


class TutorialSide:
    """A lockstep `Side` around fresh instances of a `TutorialImpl`'s classes, holding `initial`'s weights."""

    def __init__(
        self,
        impl: TutorialImpl,
        initial: dict[str, np.ndarray],
        image_shape: tuple[int, int],
        lr: float,
    ) -> None:
        self.impl, self.lr, self.image_shape = impl, float(lr), tuple(image_shape)
        self.num_filters = num_filters = initial["filters"].shape[0]
        input_len, self.num_classes = initial["dense_weights"].shape
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

    def forward_backward(self, image: np.ndarray, label: int) -> dict[str, np.ndarray]:
        """One tutorial `train()` step; every tensor it exposes, gradients recovered from the update."""
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
                "conv_out": conv_out,
                "pool_out": pool_out,
                "probs": probs,
                "loss": np.asarray(loss, dtype=np.float64),
                "d_pool_out": d_pool_out,
                "d_conv_out": d_conv_out,
            }
            for name, gradient_name in GRADIENT_OF.items():
                tensors[gradient_name] = _recovered(before[name], after[name], self.lr)
        tensors["d_logits"] = tensors["d_dense_biases"].copy()
        self.missing = {}
        if isinstance(logits, np.ndarray) and logits.shape == (self.num_classes,):
            tensors["logits"] = logits.copy()
        else:
            self.missing["logits"] = (
                f"{self._name('Softmax')} caches no {self._name('Softmax.last_totals')} of shape ({self.num_classes},)"
            )
        if gradient is None:
            self.missing["d_image"] = f"{self._name('Conv3x3')}.{self._name('Conv3x3.backprop')} returned None"
        else:
            tensors["d_image"] = gradient
        return tensors

    def update(self, lr: float) -> None:
        """No-op: the tutorial's `backprop` already applied SGD at the same lr (checked)."""
        if float(lr) != self.lr:
            raise ValueError(f"lr {lr} differs from the lr {self.lr} this side passes to backprop")

    def parameters(self) -> dict[str, np.ndarray]:
        """Copies of the live parameters, under scratch's names."""
        return {
            name: _copy(getattr(self.layers[layer], self._name(f"{layer}.{attribute}")))
            for name, (layer, attribute) in PARAMETER_ATTRIBUTES.items()
        }

    def load_parameters(self, params: dict[str, np.ndarray]) -> None:
        """Set each parameter attribute to a copy of `params[name]`."""
        for name, (layer, attribute) in PARAMETER_ATTRIBUTES.items():
            setattr(self.layers[layer], self._name(f"{layer}.{attribute}"), np.array(params[name], copy=True))

    # --- provenance, for reports ----------------------------------------------------------------------

    def provenance(self) -> dict[str, str]:
        """How each tensor was obtained from the implementation (or why it was not)."""
        c, p, s = (self._name(layer) for layer in ("Conv3x3", "MaxPool2", "Softmax"))
        how = {
            "conv_out": f"{c}.{self._name('Conv3x3.forward')} return value",
            "pool_out": f"{p}.{self._name('MaxPool2.forward')} return value",
            "logits": f"{s}.{self._name('Softmax.last_totals')} (cached by forward)",
            "probs": f"{s}.{self._name('Softmax.forward')} return value",
            "loss": "-log(probs[label]), as train() computes it",
            "d_logits": "recovered from the bias update: dL/dlogits = dL/dbiases = (before - after) / lr",
            "d_dense_weights": f"recovered from the update of {s}.{self._name('Softmax.weights')}: "
            "(before - after) / lr",
            "d_dense_biases": f"recovered from the update of {s}.{self._name('Softmax.biases')}: (before - after) / lr",
            "d_pool_out": f"{s}.{self._name('Softmax.backprop')} return value",
            "d_conv_out": f"{p}.{self._name('MaxPool2.backprop')} return value",
            "d_filters": f"recovered from the update of {c}.{self._name('Conv3x3.filters')}: (before - after) / lr",
            "d_image": f"{c}.{self._name('Conv3x3.backprop')} return value (dL/d normalised image)",
        }
        for name, why in self.missing.items():
            how[name] = f"not compared: {why}"
        return how

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
