"""What every layer shares: parameters by name, gradients kept apart from the SGD update."""

from __future__ import annotations

import numpy as np

from scratch._checks import check_lr


class Layer:
    """A layer: `forward` caches, `backward` returns dL/d(input) and fills `grads`, `update` moves weights."""

    param_names: tuple[str, ...] = ()
    # Whether `forward` scans its input for NaN and Inf (the conv's does). A network turns it off in its layers: it
    # checks the images once, and past them a non-finite value means training diverged, which should reach the loss
    # (as it would in PyTorch) rather than stop a step halfway.
    check_finite = True

    def __init__(self) -> None:
        self.grads: dict[str, np.ndarray] = {}

    def parameters(self) -> dict[str, np.ndarray]:
        """The layer's parameter arrays by attribute name (live arrays, not copies)."""
        return {name: getattr(self, name) for name in self.param_names}

    def update(self, lr: float) -> None:
        """Plain SGD, in place: param -= lr * grad (lr is a Python float, so float32 stays float32), from the last
        backward's gradients, which it uses up: a second update with no backward between is refused."""
        lr = check_lr(lr)  # backprop(d) without a learn_rate, or a NaN, would otherwise fail deep in NumPy or spread
        for name in self.param_names:
            param = getattr(self, name)
            try:
                gradient = self.grads[name]
            except KeyError:
                raise ValueError(
                    f"{type(self).__name__}.update: no gradient of its {name} since the last update; run backward "
                    "(Network.forward_backward) before each update"
                ) from None
            # In place on the live array. (`param[...] -= g` would also copy the result onto itself afterwards.)
            param -= lr * gradient
        if self.param_names:
            self.grads = {}

    def parameter_backward(self, d_L_d_out: np.ndarray) -> None:
        """Only the parameter gradients, into `grads`: all that training needs of the first layer, whose input
        gradient (dL/d(image)) nothing uses. This default runs the whole `backward`; a layer whose input gradient
        costs much (the conv's) computes only its parameters' instead."""
        self.backward(d_L_d_out)

    def backprop(self, d_L_d_out: np.ndarray, learn_rate: float | None = None) -> np.ndarray:
        """The tutorial's interface: backward, then (for layers with weights) the SGD update."""
        d_L_d_input = self.backward(d_L_d_out)
        if self.param_names:
            self.update(learn_rate)
        return d_L_d_input

    def forward(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        """Compute the output and cache what backward needs."""
        raise NotImplementedError

    def backward(self, d_L_d_out: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        """Return dL/d(input); store parameter gradients in `grads`; move no weight."""
        raise NotImplementedError
