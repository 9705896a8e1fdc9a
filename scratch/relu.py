"""ReLU: max(x, 0) elementwise; the gradient passes where the input was positive (0 at 0, as PyTorch)."""

from __future__ import annotations

import numpy as np

from scratch.layer import Layer


class ReLU(Layer):
    """Vectorised ReLU on any activation shape."""

    kind = "relu"

    def forward(self, x: np.ndarray) -> np.ndarray:
        """out = max(x, 0); NaN propagates."""
        self._passes = x > 0
        return np.where(self._passes | np.isnan(x), x, x.dtype.type(0))

    def backward(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """dL/dx = dL/dout where x > 0, else 0 (PyTorch's threshold_backward: exact zeros, no -0.0)."""
        return np.where(self._passes, d_L_d_out, d_L_d_out.dtype.type(0))


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
