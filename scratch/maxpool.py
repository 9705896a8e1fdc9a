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
    """Vectorised 2x2 max-pool over the four strided corner views of the input (no copies, no window loop)."""

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
        corners = _corners(x)  # 4 views (out_h, out_w, C): window elements (0,0), (0,1), (1,0), (1,1)
        out = np.maximum(np.maximum(corners[0], corners[1]), np.maximum(corners[2], corners[3]))
        self._is_max = [corner == out for corner in corners]
        self.tied_windows = int(np.count_nonzero(sum(m.view(np.uint8) for m in self._is_max) > 1))
        return out

    def backward(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """Send each window's gradient to its max element(s), by the tie policy."""
        routes = self._is_max
        if self.tie_policy == "first":  # a corner wins only if no earlier corner (row-major) was a max
            taken = routes[0]
            routes = [routes[0]]
            for is_max in self._is_max[1:]:
                routes.append(is_max & ~taken)
                taken = taken | is_max
        d_L_d_input = np.zeros(self.last_input.shape, dtype=d_L_d_out.dtype)
        for d_corner, route in zip(_corners(d_L_d_input), routes):
            np.multiply(route, d_L_d_out, out=d_corner)
        return d_L_d_input


def _corners(x: np.ndarray) -> list[np.ndarray]:
    """The four strided views x[r::2, c::2] cropped to whole windows (odd sizes floor)."""
    out_h, out_w = x.shape[0] // 2, x.shape[1] // 2
    return [x[r : 2 * out_h : 2, c : 2 * out_w : 2] for r in (0, 1) for c in (0, 1)]


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
