"""MaxPool2: 2x2 max-pool, stride 2, on an `(H, W, C)` input; odd sizes floor (the last row/column is dropped).

Backward routes each window's gradient by a tie policy:
- "first" (default, PyTorch's rule): only the first maximum in row-major order gets it. PyTorch's CPU kernel
  replaces its running max only when `val > maxval`, so the earliest maximum wins.
- "all" (the tutorial's rule): every element equal to the window's max gets the full gradient, so a tied
  window passes on its gradient several times over. About 60% of windows tie on MNIST (flat background).
"""

from __future__ import annotations

import numpy as np

from scratch._checks import check_choice
from scratch.layer import Layer

TIE_POLICIES = ("first", "all")


class MaxPool2(Layer):
    """Vectorised 2x2 max-pool: the four elements of every window side by side, no window loop.

    Forward copies the input once into `(4, out_h, out_w, C)`, element k of each window in plane k (row-major:
    (0,0), (0,1), (1,0), (1,1)), so every later step is one whole-array operation over a contiguous block;
    reductions over several strided axes, or four strided corner views, cost two to four times as much here.
    """

    def __init__(self, tie_policy: str = "first") -> None:
        super().__init__()
        self.tie_policy = check_choice("tie_policy", tie_policy, TIE_POLICIES)
        self.tied_windows = 0

    def forward(self, x: np.ndarray) -> np.ndarray:
        """out[i, j, c] = max of x[2i:2i+2, 2j:2j+2, c]; counts windows whose max is tied."""
        if not isinstance(x, np.ndarray) or x.ndim != 3:
            raise ValueError(f"MaxPool2 input: expected an (H, W, C) array, got {getattr(x, 'shape', type(x))}")
        if x.shape[0] < 2 or x.shape[1] < 2:
            raise ValueError(f"MaxPool2 input: expected at least 2x2, got shape {x.shape}")
        self.last_input = x
        windows = _window_planes(x).reshape(4, x.shape[0] // 2, x.shape[1] // 2, x.shape[2])  # a copy
        out = np.maximum.reduce(windows, axis=0)  # (out_h, out_w, C); NaN propagates, as np.maximum does
        self._is_max = windows == out  # (4, out_h, out_w, C): which elements equal their window's max
        # A window is tied when two or more of its elements equal the max (a uint8 count: at most 4).
        maxima = np.add.reduce(self._is_max, axis=0, dtype=np.uint8)  # (out_h, out_w, C), 1 to 4 (0 if NaN)
        self.tied_windows = int(np.count_nonzero(maxima > 1))
        return out

    def backward(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """Send each window's gradient to its max element(s), by the tie policy."""
        routes = self._is_max if self.tie_policy == "all" else _first_only(self._is_max)
        # (4, out_h, out_w, C): the gradient where routed, 0 elsewhere (bool * float, as before: -0.0 and NaN
        # products included).
        d_windows = np.multiply(routes, d_L_d_out)
        out_h, out_w = routes.shape[1:3]
        d_L_d_input = np.empty(self.last_input.shape, dtype=d_L_d_out.dtype)
        _window_planes(d_L_d_input)[...] = d_windows.reshape(2, 2, *d_windows.shape[1:])
        d_L_d_input[2 * out_h :] = 0  # an odd last row and column, dropped by the pool, get no gradient
        d_L_d_input[:, 2 * out_w :] = 0
        return d_L_d_input


def _window_planes(x: np.ndarray) -> np.ndarray:
    """A view `(2, 2, out_h, out_w, C)` of `x` cropped to whole windows (odd sizes floor): [r, c, i, j] is
    x[2i + r, 2j + c]. Splitting an axis never copies, so writing into this view writes into `x`."""
    out_h, out_w, channels = x.shape[0] // 2, x.shape[1] // 2, x.shape[2]
    cropped = x[: 2 * out_h, : 2 * out_w]
    return cropped.reshape(out_h, 2, out_w, 2, channels).transpose(1, 3, 0, 2, 4)


def _first_only(is_max: np.ndarray) -> np.ndarray:
    """PyTorch's rule: of each window's maxima, keep only the first in row-major order (planes 0, 1, 2, 3)."""
    first = np.empty_like(is_max)
    first[0] = is_max[0]
    np.greater(is_max[1], is_max[0], out=first[1])  # for bools, a > b is a and not b
    taken = is_max[0] | is_max[1]  # windows whose max is already routed
    np.greater(is_max[2], taken, out=first[2])
    taken |= is_max[2]
    np.greater(is_max[3], taken, out=first[3])
    return first


class MaxPool2Loops(MaxPool2):
    """The tutorial's loop code, line by line, with the tie policy made explicit: the spec."""

    def iterate_regions(self, image: np.ndarray):
        """Generate the non-overlapping 2x2 regions of `image` with their output position (i, j)."""
        h, w, _ = image.shape
        new_h = h // 2
        new_w = w // 2
        for i in range(new_h):
            for j in range(new_w):
                im_region = image[(i * 2) : (i * 2 + 2), (j * 2) : (j * 2 + 2)]
                yield im_region, i, j

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The tutorial's forward, plus the tie count."""
        self.last_input = x
        h, w, num_filters = x.shape
        output = np.zeros((h // 2, w // 2, num_filters), dtype=x.dtype)
        self.tied_windows = 0
        for im_region, i, j in self.iterate_regions(x):
            amax = np.amax(im_region, axis=(0, 1))
            output[i, j] = amax
            self.tied_windows += int(np.count_nonzero((im_region == amax).sum(axis=(0, 1)) > 1))
        return output

    def backward(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """The tutorial's backward; under "first", a window stops routing after its first max."""
        d_L_d_input = np.zeros(self.last_input.shape, dtype=d_L_d_out.dtype)
        for im_region, i, j in self.iterate_regions(self.last_input):
            h, w, f = im_region.shape
            amax = np.amax(im_region, axis=(0, 1))
            routed = np.zeros(f, dtype=bool)
            for i2 in range(h):
                for j2 in range(w):
                    for f2 in range(f):
                        # If this pixel was the max value, copy the gradient to it.
                        if im_region[i2, j2, f2] == amax[f2] and not (self.tie_policy == "first" and routed[f2]):
                            d_L_d_input[i * 2 + i2, j * 2 + j2, f2] = d_L_d_out[i, j, f2]
                            routed[f2] = True
        return d_L_d_input
