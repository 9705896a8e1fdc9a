"""Conv: a K x K convolution with F filters (valid padding, stride 1, cross-correlation, no kernel flip).

The tutorial's conv is `Conv(3, 8)`: no bias, one input channel. Activations are NHWC: input `(N, H, W, C)`,
output `(N, H-K+1, W-K+1, F)`. Filters are `(F, K, K)` for one input channel, as in the tutorial, and
`(F, K, K, C)` otherwise; PyTorch's `Conv2d` weight is `(F, C, K, K)` (`reference.layouts` owns that mapping).
An optional bias `(F,)` is added to every position.
"""

from __future__ import annotations

import numpy as np

from scratch._checks import check_array, check_dtype
from scratch.layer import Layer


class Conv(Layer):
    """Vectorised convolution: one matrix product over all windows of the batch, forward and backward."""

    kind = "conv"

    def __init__(
        self,
        kernel: int,
        num_filters: int,
        in_channels: int = 1,
        bias: bool = False,
        rng: np.random.Generator | None = None,
        dtype: object = np.float64,
    ) -> None:
        super().__init__()
        rng = np.random.default_rng(0) if rng is None else rng
        dtype = check_dtype(dtype)
        self.kernel, self.num_filters, self.in_channels = kernel, num_filters, in_channels
        shape = (num_filters, kernel, kernel) if in_channels == 1 else (num_filters, kernel, kernel, in_channels)
        # Drawn in float64 then cast, so a float32 network starts from the float64 network's weights, rounded.
        self.filters = (rng.standard_normal(shape) / (kernel * kernel)).astype(dtype)
        self.param_names = ("filters", "biases") if bias else ("filters",)
        self.has_bias = bias
        if bias:
            self.biases = np.zeros(num_filters, dtype=dtype)

    def _kernel(self) -> np.ndarray:
        """The filters as `(F, K, K, C)`: a view (C = 1 for the tutorial's `(F, K, K)`)."""
        return self.filters if self.filters.ndim == 4 else self.filters[..., np.newaxis]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """out[n, i, j, f] = sum_{k, l, c} x[n, i + k, j + l, c] * filters[f, k, l, c] (+ biases[f])."""
        check_array("conv input", x, 4, self.filters.dtype, finite=self.check_finite)
        batch, height, width, channels = x.shape
        kernel = self._kernel()  # (F, K, K, C)
        if height < self.kernel or width < self.kernel:
            raise ValueError(f"conv input: expected at least {self.kernel}x{self.kernel}, got shape {x.shape}")
        if channels != kernel.shape[3]:
            raise ValueError(f"conv input: expected {kernel.shape[3]} channels, got shape {x.shape}")
        x = np.ascontiguousarray(x)  # a no-op for the network's own activations; the window view needs it
        self.last_input = x
        out_h, out_w = height - self.kernel + 1, width - self.kernel + 1
        # (N * out_h * out_w, K*K*C): each row one window in (k, l, c) order, matching the kernel's flattening.
        windows = _window_view(x, self.kernel)  # (N, out_h, out_w, K, K, C), no copy yet
        if channels == 1:
            # Copied as its transpose, (K*K, N * windows), each row the image shifted by (k, l): the copy moves runs
            # of out_w pixels instead of one pixel at a time. OpenBLAS gives the products of this layout the same
            # bits as those of the window-by-window one (the shipped golden record holds).
            self._patches = windows.transpose(3, 4, 5, 0, 1, 2).reshape(-1, batch * out_h * out_w).T
        else:
            # Window by window, each kernel position copying C channels in a run. (For a few channels, OpenBLAS
            # rounds the transposed layout's product differently.)
            self._patches = windows.reshape(batch * out_h * out_w, -1)
        # (K*K*C, F), made contiguous: OpenBLAS picks its kernel by layout, and this is the layout whose results
        # the shipped golden record holds.
        kernel_columns = np.ascontiguousarray(kernel.reshape(self.num_filters, -1).T)
        if self.num_filters == 1:
            # A single column makes this a BLAS gemv, which rounds rows differently by position: identical windows
            # would then differ in the last bit and break the exact ties the pool's tie rule depends on. A row-wise
            # sum computes every row the same way.
            out = (self._patches * kernel_columns[:, 0]).sum(axis=1, keepdims=True)
        else:
            out = self._patches @ kernel_columns
        if self.has_bias:
            out += self.biases
        return out.reshape(batch, out_h, out_w, self.num_filters)

    def backward(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """The parameter gradients (`parameter_backward`), then dL/dinput: each window's gradient scattered back."""
        self.parameter_backward(d_L_d_out)
        num_filters, size = self.num_filters, self.kernel
        d_out_matrix = d_L_d_out.reshape(-1, num_filters)  # (N * windows, F)
        d_windows = d_out_matrix @ self._kernel().reshape(num_filters, -1)  # (N * windows, K*K*C): per window
        # Summed back over the K*K kernel offsets: offset (k, l)'s share goes, shifted by (k, l), into plane
        # K*k + l, then the planes are summed along axis 0, plane after plane for every pixel, just as adding
        # K*K shifted slices one after another would (so it rounds the same).
        input_shape = self.last_input.shape
        planes = np.zeros((size * size, *input_shape), dtype=self.filters.dtype)  # 0 where no window lands
        out_h, out_w = input_shape[1] - size + 1, input_shape[2] - size + 1
        _shifted_planes(planes, size, out_h, out_w)[...] = d_windows.reshape(
            input_shape[0], out_h, out_w, size, size, -1
        )
        return planes.sum(axis=0)  # (N, H, W, C), a fresh array

    def parameter_backward(self, d_L_d_out: np.ndarray) -> None:
        """dL/dfilters = windows^T . dL/dout; dL/dbiases = sum of dL/dout: `backward` without dL/dinput."""
        d_out_matrix = d_L_d_out.reshape(-1, self.num_filters)  # (N * windows, F)
        d_L_d_kernel = np.dot(d_out_matrix.T, self._patches)  # (F, K*K*C); np.dot: as `@`, with less overhead
        self.grads = {"filters": d_L_d_kernel.reshape(self.filters.shape)}
        if self.has_bias:
            self.grads["biases"] = d_out_matrix.sum(axis=0)


def _shifted_planes(planes: np.ndarray, size: int, out_h: int, out_w: int) -> np.ndarray:
    """A writable view `(N, out_h, out_w, K, K, C)` of C-contiguous `planes` `(K*K, N, H, W, C)`: [n, i, j, k, l, c]
    is planes[K*k + l, n, i + k, j + l, c], where window (i, j) reads input (i + k, j + l, c) at offset (k, l).

    Built from strides, as sliding_window_view does; NumPy's ndarray constructor checks that every element of the
    view lies inside `planes`.
    """
    _, batch, height, width, channels = planes.shape
    plane, image, row = batch * height * width * channels, height * width * channels, width * channels
    element_strides = (image, row, channels, size * plane + row, plane + channels, 1)  # n, i, j, k, l, c
    return np.ndarray(
        (batch, out_h, out_w, size, size, channels),
        dtype=planes.dtype,
        buffer=planes,
        strides=tuple(stride * planes.itemsize for stride in element_strides),
    )


def _window_view(x: np.ndarray, size: int) -> np.ndarray:
    """A read-only view `(N, out_h, out_w, K, K, C)` of C-contiguous NHWC `x`: [n, i, j, k, l, c] is
    x[n, i + k, j + l, c], what window (i, j) sees at kernel position (k, l, c). Built from strides, as
    sliding_window_view does (NumPy's ndarray constructor checks that every element lies inside `x`)."""
    batch, height, width, channels = x.shape
    n, row, column, channel = x.strides
    view = np.ndarray(
        (batch, height - size + 1, width - size + 1, size, size, channels),
        dtype=x.dtype,
        buffer=x,
        strides=(n, row, column, row, column, channel),
    )
    view.flags.writeable = False
    return view


class ConvLoops(Conv):
    """The tutorial's loop code, line by line, for any kernel, channels and bias (plus the input gradient the
    tutorial leaves as an exercise): the spec."""

    parameter_backward = Layer.parameter_backward  # one region walk computes every gradient: no shortcut here

    def iterate_regions(self, image: np.ndarray):
        """Generate every K x K region of one `(H, W, C)` image with its top-left corner (i, j)."""
        h, w = image.shape[:2]
        for i in range(h - self.kernel + 1):
            for j in range(w - self.kernel + 1):
                yield image[i : (i + self.kernel), j : (j + self.kernel)], i, j

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The tutorial's forward: one image, then one region at a time."""
        check_array("conv input", x, 4, self.filters.dtype, finite=self.check_finite)
        self.last_input = x
        batch, h, w, _ = x.shape
        kernel = self._kernel()
        output = np.zeros((batch, h - self.kernel + 1, w - self.kernel + 1, self.num_filters), self.filters.dtype)
        for n in range(batch):
            for im_region, i, j in self.iterate_regions(x[n]):
                output[n, i, j] = np.sum(im_region * kernel, axis=(1, 2, 3))
                if self.has_bias:
                    output[n, i, j] += self.biases
        return output

    def backward(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """The tutorial's filter gradient, and the input and bias gradients by the same region walk."""
        kernel = self._kernel()
        d_L_d_kernel = np.zeros(kernel.shape, dtype=self.filters.dtype)
        d_L_d_input = np.zeros(self.last_input.shape, dtype=self.filters.dtype)
        for n in range(self.last_input.shape[0]):
            for im_region, i, j in self.iterate_regions(self.last_input[n]):
                for f in range(self.num_filters):
                    d_L_d_kernel[f] += d_L_d_out[n, i, j, f] * im_region
                    d_L_d_input[n, i : i + self.kernel, j : j + self.kernel] += d_L_d_out[n, i, j, f] * kernel[f]
        self.grads = {"filters": d_L_d_kernel.reshape(self.filters.shape)}
        if self.has_bias:
            self.grads["biases"] = d_L_d_out.sum(axis=(0, 1, 2))
        return d_L_d_input
