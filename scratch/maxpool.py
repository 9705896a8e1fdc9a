"""MaxPool: K x K max-pool, stride K, on NHWC activations; odd sizes floor (the leftover rows/columns are dropped).

Backward routes each window's gradient by a tie policy:
- "first" (default, PyTorch's rule): only the first maximum in row-major order gets it. PyTorch's CPU kernel
  replaces its running max only when `val > maxval`, so the earliest maximum wins.
- "all" (the tutorial's rule): every element equal to the window's max gets the full gradient, so a tied
  window passes on its gradient several times over. About 60% of 2x2 windows tie on MNIST (flat background).
"""

from __future__ import annotations

import numpy as np

from scratch._checks import check_choice
from scratch.layer import Layer

TIE_POLICIES = ("first", "all")


class MaxPool(Layer):
    """Vectorised max-pool: the K*K elements of every window side by side, no window loop.

    Forward copies the input once into `(K*K, N, out_h, out_w, C)`, element k of each window in plane k (row-major),
    so every later step is one whole-array operation over a contiguous block.
    """

    kind = "pool"

    def __init__(self, kernel: int = 2, tie_policy: str = "first") -> None:
        super().__init__()
        self.kernel = kernel
        self.tie_policy = check_choice("tie_policy", tie_policy, TIE_POLICIES)
        self._tied_windows: int | None = 0

    def forward(self, x: np.ndarray) -> np.ndarray:
        """out[n, i, j, c] = max of x[n, Ki:Ki+K, Kj:Kj+K, c]; `tied_windows` then counts windows whose max is tied."""
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            raise ValueError(f"pool input: expected an (N, H, W, C) array, got {getattr(x, 'shape', type(x))}")
        size = self.kernel
        if x.shape[1] < size or x.shape[2] < size:
            raise ValueError(f"pool input: expected at least {size}x{size}, got shape {x.shape}")
        self.last_input = x
        planes = window_planes(x, size)
        windows = planes.reshape(size * size, *planes.shape[2:])  # a copy: (K*K, N, out_h, out_w, C)
        out = np.maximum.reduce(windows, axis=0)  # NaN propagates, as np.maximum does
        self._is_max = windows == out  # which elements equal their window's max
        self._tied_windows = None  # counted when asked for: a training step never asks
        return out

    @property
    def tied_windows(self) -> int:
        """How many windows of the last forward have a tied max: two or more elements equal to it."""
        if self._tied_windows is None:
            size = self.kernel
            maxima = np.add.reduce(self._is_max, axis=0, dtype=np.uint8 if size * size < 256 else np.int64)
            self._tied_windows = int(np.count_nonzero(maxima > 1))
        return self._tied_windows

    @tied_windows.setter
    def tied_windows(self, count: int) -> None:  # the loop spec counts as it walks the windows
        self._tied_windows = count

    def backward(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """Send each window's gradient to its max element(s), by the tie policy."""
        size = self.kernel
        routes = self._is_max if self.tie_policy == "all" else first_only(self._is_max)
        # The gradient where routed, 0 elsewhere, in the planes' layout: one pass over contiguous arrays.
        routed = np.multiply(routes, d_L_d_out)  # (K*K, N, out_h, out_w, C)
        whole_windows = from_window_planes(routed, size)
        if whole_windows.shape == self.last_input.shape:
            return whole_windows
        d_L_d_input = np.zeros(self.last_input.shape, dtype=d_L_d_out.dtype)  # odd sizes: the leftovers get none
        d_L_d_input[:, : whole_windows.shape[1], : whole_windows.shape[2]] = whole_windows
        return d_L_d_input


def window_planes(x: np.ndarray, size: int) -> np.ndarray:
    """A view `(K, K, N, out_h, out_w, C)` of NHWC `x` cropped to whole windows (odd sizes floor): [r, c, n, i, j]
    is x[n, K*i + r, K*j + c]. Splitting an axis never copies, so writing into this view writes into `x`."""
    batch, height, width, channels = x.shape
    out_h, out_w = height // size, width // size
    cropped = x[:, : size * out_h, : size * out_w]
    return cropped.reshape(batch, out_h, size, out_w, size, channels).transpose(2, 4, 0, 1, 3, 5)


def from_window_planes(planes: np.ndarray, size: int) -> np.ndarray:
    """`(K*K, N, out_h, out_w, C)` planes back in NHWC, `(N, K*out_h, K*out_w, C)`: what `window_planes` splits.

    C-contiguous, as every layer's output: one copy in the result's order, or `planes` itself reshaped where its
    elements already lie in that order (a batch of one image of one window). Copying into a fresh array this
    way round, rather than writing through `window_planes`' view of one, is the faster of the two in NumPy.
    """
    _, batch, out_h, out_w, channels = planes.shape
    grouped = planes.reshape(size, size, batch, out_h, out_w, channels).transpose(2, 3, 0, 4, 1, 5)
    # One window per image: the planes keep a non-contiguous input's memory order, and so would this view.
    return np.ascontiguousarray(grouped.reshape(batch, size * out_h, size * out_w, channels))


def first_only(is_max: np.ndarray) -> np.ndarray:
    """PyTorch's rule: of each window's maxima (planes in row-major order), keep only the first."""
    first = np.empty_like(is_max)
    first[0] = is_max[0]
    taken = is_max[0]  # windows whose max is already routed (a new array from the first `|` on)
    for plane in range(1, len(is_max)):
        np.greater(is_max[plane], taken, out=first[plane])  # for bools, a > b is a and not b
        if plane + 1 < len(is_max):
            taken = taken | is_max[plane]
    return first


class MaxPoolLoops(MaxPool):
    """The tutorial's loop code, line by line, for any K, with the tie policy made explicit: the spec."""

    def iterate_regions(self, image: np.ndarray):
        """Generate the non-overlapping K x K regions of one `(H, W, C)` image with their output position (i, j)."""
        h, w, _ = image.shape
        size = self.kernel
        for i in range(h // size):
            for j in range(w // size):
                yield image[(i * size) : (i * size + size), (j * size) : (j * size + size)], i, j

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The tutorial's forward, plus the tie count."""
        self.last_input = x
        batch, h, w, num_filters = x.shape
        output = np.zeros((batch, h // self.kernel, w // self.kernel, num_filters), dtype=x.dtype)
        self.tied_windows = 0
        for n in range(batch):
            for im_region, i, j in self.iterate_regions(x[n]):
                amax = np.amax(im_region, axis=(0, 1))
                output[n, i, j] = amax
                self.tied_windows += int(np.count_nonzero((im_region == amax).sum(axis=(0, 1)) > 1))
        return output

    def backward(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """The tutorial's backward; under "first", a window stops routing after its first max."""
        d_L_d_input = np.zeros(self.last_input.shape, dtype=d_L_d_out.dtype)
        size = self.kernel
        for n in range(self.last_input.shape[0]):
            for im_region, i, j in self.iterate_regions(self.last_input[n]):
                h, w, f = im_region.shape
                amax = np.amax(im_region, axis=(0, 1))
                routed = np.zeros(f, dtype=bool)
                for i2 in range(h):
                    for j2 in range(w):
                        for f2 in range(f):
                            # If this pixel was the max value, copy the gradient to it.
                            if im_region[i2, j2, f2] == amax[f2] and not (self.tie_policy == "first" and routed[f2]):
                                d_L_d_input[n, i * size + i2, j * size + j2, f2] = d_L_d_out[n, i, j, f2]
                                routed[f2] = True
        return d_L_d_input
