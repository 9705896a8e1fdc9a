"""ReLU: max(x, 0) elementwise; the gradient passes where the input was positive (0 at 0, as PyTorch)."""

from __future__ import annotations

import numpy as np

from scratch.layer import Layer


class ReLU(Layer):
    """Vectorised ReLU on any activation shape."""

    kind = "relu"

    def forward(self, x: np.ndarray) -> np.ndarray:
        """out = max(x, 0); NaN propagates (np.maximum does), and -0.0 becomes +0.0 (adding +0.0 does that and leaves
        every other value as it is)."""
        self._passes = x > 0
        out = np.maximum(x, x.dtype.type(0))
        out += x.dtype.type(0)
        return out

    def backward(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """dL/dx = dL/dout where x > 0, else 0 (PyTorch's threshold_backward: exact zeros, no -0.0)."""
        # np.where(passes, d, 0) without its per-element branch, which stalls on a mask half True at random: the
        # gradient's bit patterns as integers times the mask keep every bit where x > 0 (NaN and -0.0 included)
        # and give all-zero bits, +0.0, elsewhere. No float arithmetic, so an infinite gradient cannot turn to NaN.
        bits = d_L_d_out.view(f"i{d_L_d_out.itemsize}")
        return np.multiply(bits, self._passes).view(d_L_d_out.dtype)


class ReLULoops(ReLU):
    """Element by element: the spec."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        """One element at a time."""
        self.last_input = x
        out = np.zeros_like(x)
        for index, value in np.ndenumerate(x):
            out[index] = value if (value > 0 or np.isnan(value)) else 0
        return out

    def backward(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """One element at a time."""
        d_L_d_input = np.zeros_like(d_L_d_out)
        for index, value in np.ndenumerate(self.last_input):
            if value > 0:
                d_L_d_input[index] = d_L_d_out[index]
        return d_L_d_input
