"""Conv3x3: the tutorial's bias-free 3x3 convolution (valid padding, cross-correlation, no kernel flip).

Filter layout: `(F, 3, 3)` for a 2-D `(H, W)` input, as in the tutorial; `(F, 3, 3, C)` for an `(H, W, C)`
input, so layers stack. Output is `(H-2, W-2, F)`, HWC. PyTorch's `Conv2d` weight is `(F, C, 3, 3)`;
the bridge in `reference/` owns that mapping.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from scratch._checks import check_array, check_dtype
from scratch.layer import Layer


class Conv3x3(Layer):
    """Vectorised 3x3 convolution: one matrix product over all windows, forward and backward."""

    param_names = ("filters",)

    def __init__(
        self,
        num_filters: int,
        in_channels: int | None = None,
        rng: np.random.Generator | None = None,
        dtype: object = np.float64,
    ) -> None:
        super().__init__()
        rng = np.random.default_rng(0) if rng is None else rng
        dtype = check_dtype(dtype)
        shape = (num_filters, 3, 3) if in_channels is None else (num_filters, 3, 3, in_channels)
        # Drawn in float64 then cast, so a float32 network starts from the float64 network's weights, rounded.
        self.filters = (rng.standard_normal(shape) / 9).astype(dtype)
        self.num_filters = num_filters
        self.in_channels = in_channels

    @property
    def input_ndim(self) -> int:
        """2 for the tutorial's single-channel `(H, W)` input, 3 for `(H, W, C)`."""
        return 2 if self.in_channels is None else 3

    def _kernel(self) -> np.ndarray:
        """The filters as `(F, 3, 3, C)`: a view, C = 1 for the 2-D layout."""
        return self.filters if self.in_channels is not None else self.filters[..., np.newaxis]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """out[i, j, f] = sum_{k, l, c} x[i + k, j + l, c] * filters[f, k, l, c]."""
        check_array("Conv3x3 input", x, self.input_ndim, self.filters.dtype)
        x_hwc = x if x.ndim == 3 else x[..., np.newaxis]
        height, width, channels = x_hwc.shape
        if height < 3 or width < 3:
            raise ValueError(f"Conv3x3 input: expected at least 3x3, got shape {x.shape}")
        kernel = self._kernel()  # (F, 3, 3, C)
        if channels != kernel.shape[3]:
            raise ValueError(f"Conv3x3 input: expected {kernel.shape[3]} channels, got shape {x.shape}")
        patch_index = _patch_index(x.shape)
        self.last_input = x
        out_h, out_w = height - 2, width - 2
        # (out_h * out_w, 9C), each row one window in (k, l, c) order, matching the kernel's flattening.
        # One gather by precomputed indices (~3 us) instead of sliding_window_view + transpose + copy (~20 us).
        self._patches = x.take(patch_index)  # the method: np.take adds two Python wrapper calls
        # (9C, F), made contiguous: OpenBLAS takes ~2 us less than with the transposed view. Same bits for the
        # tutorial's 28x28 digits; in other shapes it may pick another kernel and differ in the last bit or two.
        kernel_columns = np.ascontiguousarray(kernel.reshape(self.num_filters, -1).T)
        if self.num_filters == 1:
            # A single column makes this a BLAS gemv, which rounds rows differently by position: identical windows
            # would then differ in the last bit and break the exact ties the pool's tie rule depends on. A row-wise
            # sum computes every row the same way.
            out = (self._patches * kernel_columns[:, 0]).sum(axis=1, keepdims=True)
        else:
            out = self._patches @ kernel_columns
        return out.reshape(out_h, out_w, self.num_filters)  # (out_h, out_w, F)

    def backward(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """dL/dfilters = windows^T . dL/dout; dL/dinput scatters each window's share back."""
        out_h, out_w, num_filters = d_L_d_out.shape
        d_out_matrix = d_L_d_out.reshape(out_h * out_w, num_filters)  # (windows, F)
        kernel = self._kernel()
        d_L_d_kernel = (d_out_matrix.T @ self._patches).reshape(kernel.shape)  # (F, 3, 3, C)
        self.grads = {"filters": d_L_d_kernel.reshape(self.filters.shape)}
        d_windows = d_out_matrix @ kernel.reshape(num_filters, -1)  # (windows, 9C): each window's gradient
        # Summed back over the 9 kernel offsets: offset (k, l)'s share goes, shifted by (k, l), into plane 3k + l,
        # then the planes are summed along axis 0. That sum adds plane after plane, (0, 0), (0, 1), ..., (2, 2),
        # for every pixel, just as adding nine shifted slices one after another would, so it rounds the same;
        # it is one copy and one sum (~8 us) instead of nine slice additions (~18 us).
        input_shape = self.last_input.shape
        planes = np.zeros((9, *input_shape), dtype=self.filters.dtype)  # (9, H, W[, C]): 0 where no window lands
        _shifted_planes(planes, out_h, out_w)[...] = d_windows.reshape(out_h, out_w, 3, 3, -1)
        return planes.sum(axis=0)  # (H, W[, C]), a fresh array


def _shifted_planes(planes: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """A writable view `(out_h, out_w, 3, 3, C)` of C-contiguous `planes` `(9, H, W[, C])`: [i, j, k, l, c] is
    planes[3k + l, i + k, j + l, c], where window (i, j) reads input (i + k, j + l, c) at kernel offset (k, l).

    Built from strides, as as_strided and sliding_window_view do, without their few us of Python overhead a step.
    NumPy's ndarray constructor checks that every element of the view lies inside `planes`.
    """
    _, height, width = planes.shape[:3]
    channels = planes.shape[3] if planes.ndim == 4 else 1
    plane, row = height * width * channels, width * channels  # element strides of a C-contiguous `planes`
    element_strides = (row, channels, 3 * plane + row, plane + channels, 1)  # i, j, k, l, c
    return np.ndarray(
        (out_h, out_w, 3, 3, channels),
        dtype=planes.dtype,
        buffer=planes,
        strides=tuple(stride * planes.itemsize for stride in element_strides),
    )


@lru_cache(maxsize=16)
def _patch_index(shape: tuple[int, ...]) -> np.ndarray:
    """For inputs of `shape` (H, W[, C]): the flat (C-order) input index of window w's value at kernel position
    (k, l, c), as a read-only `(windows, 9C)` array."""
    height, width = shape[:2]
    channels = shape[2] if len(shape) == 3 else 1
    flat = np.arange(height * width * channels).reshape(height, width, channels)
    windows = sliding_window_view(flat, (3, 3), axis=(0, 1))  # (out_h, out_w, C, 3, 3)
    patch_index = windows.transpose(0, 1, 3, 4, 2).reshape((height - 2) * (width - 2), 9 * channels)
    patch_index.flags.writeable = False
    return patch_index


class Conv3x3Loops(Conv3x3):
    """The tutorial's loop code, line by line (plus the input gradient it leaves as an exercise): the spec."""

    def iterate_regions(self, image: np.ndarray):
        """Generate every 3x3 region of `image` with its top-left corner (i, j)."""
        h, w = image.shape[:2]
        for i in range(h - 2):
            for j in range(w - 2):
                im_region = image[i : (i + 3), j : (j + 3)]
                yield im_region, i, j

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The tutorial's forward: one region at a time."""
        check_array("Conv3x3 input", x, self.input_ndim, self.filters.dtype)
        self.last_input = x
        h, w = x.shape[:2]
        output = np.zeros((h - 2, w - 2, self.num_filters), dtype=self.filters.dtype)
        region_axes = tuple(range(1, self.filters.ndim))
        for im_region, i, j in self.iterate_regions(x):
            output[i, j] = np.sum(im_region * self.filters, axis=region_axes)
        return output

    def backward(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """The tutorial's filter gradient, and the input gradient by the same region walk."""
        d_L_d_filters = np.zeros(self.filters.shape, dtype=self.filters.dtype)
        d_L_d_input = np.zeros(self.last_input.shape, dtype=self.filters.dtype)
        for im_region, i, j in self.iterate_regions(self.last_input):
            for f in range(self.num_filters):
                d_L_d_filters[f] += d_L_d_out[i, j, f] * im_region
                d_L_d_input[i : i + 3, j : j + 3] += d_L_d_out[i, j, f] * self.filters[f]
        self.grads = {"filters": d_L_d_filters}
        return d_L_d_input
