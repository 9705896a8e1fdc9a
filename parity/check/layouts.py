"""A user's weight layouts: which layouts a conv's filters fit, and each parameter's conversion to scratch's.

A conv's filters may be `(F, K, K)` or `(K, K, F)` (one input channel, no channel axis), or `(F, K, K, C)`,
`(F, C, K, K)` or `(K, K, C, F)`; a dense layer's weights `(in, out)` or `(out, in)`; a bias `(N,)`, `(N, 1)` or
`(1, N)`. `ParamBinding` records one parameter's attribute and layout and converts between it and scratch's layout.
A conv's output is HWC with valid padding (`conv_output_layout` says so, and what a padded output looks like).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONV_LAYOUTS = {  # user layout -> the axes of (F, K, K, C) it holds, in its order
    "(F, K, K, C)": (0, 1, 2, 3),
    "(F, C, K, K)": (0, 3, 1, 2),
    "(K, K, C, F)": (1, 2, 3, 0),
}
SINGLE_CHANNEL_LAYOUTS = {"(F, K, K)": (0, 1, 2), "(K, K, F)": (1, 2, 0)}  # no channel axis: one input channel
BIAS_NAMES = ("biases", "bias", "b")


@dataclass(frozen=True)
class ParamBinding:
    """One parameter: the spec's name, the user's attribute, and the user's layout of it."""

    param: str  # `filters`, `biases`, `weights`
    attribute: str
    layout: str  # `(F, C, K, K)`, `(in, out)`, `(N,)`, ...
    shape: tuple[int, ...]  # the user's shape

    def to_scratch(self, value: np.ndarray) -> np.ndarray:
        """The user's array in scratch's layout (filters `(F, K, K[, C])`, weights `(in, out)`, biases `(N,)`)."""
        value = np.asarray(value)
        if self.param == "biases":
            return value.reshape(-1)
        if self.param == "weights":
            return value.T if self.layout == "(out, in)" else value
        if self.layout in SINGLE_CHANNEL_LAYOUTS:
            return value.transpose(np.argsort(SINGLE_CHANNEL_LAYOUTS[self.layout]))
        fkkc = value.transpose(np.argsort(CONV_LAYOUTS[self.layout]))
        return fkkc[..., 0] if fkkc.shape[3] == 1 else fkkc

    def to_user(self, value: np.ndarray) -> np.ndarray:
        """A scratch-layout array in the user's layout and shape."""
        value = np.asarray(value)
        if self.param == "biases":
            return value.reshape(self.shape)
        if self.param == "weights":
            return value.T if self.layout == "(out, in)" else value
        if self.layout in SINGLE_CHANNEL_LAYOUTS:
            return value.transpose(SINGLE_CHANNEL_LAYOUTS[self.layout])
        fkkc = value[..., np.newaxis] if value.ndim == 3 else value
        return fkkc.transpose(CONV_LAYOUTS[self.layout])


def conv_layouts(shape: tuple[int, ...], channels: int) -> list[tuple[str, tuple[int, int]]]:
    """Every layout the filter shape fits with `channels` input channels: (layout, (kernel, filters))."""
    fits = []
    if len(shape) == 3 and channels == 1:
        for layout, axes in SINGLE_CHANNEL_LAYOUTS.items():
            f, k1, k2 = (shape[axes.index(i)] for i in range(3))
            if k1 == k2:
                fits.append((layout, (k1, f)))
    if len(shape) == 4:
        for layout, axes in CONV_LAYOUTS.items():
            f, k1, k2, c = (shape[axes.index(i)] for i in range(4))
            if k1 == k2 and c == channels:
                fits.append((layout, (k1, f)))
    return fits


def matching_layouts(layouts, filters: np.ndarray, x: np.ndarray, out: np.ndarray):
    """The layouts under which the user's filters reproduce the user's output on the probe input `x` (H, W, C)."""
    from numpy.lib.stride_tricks import sliding_window_view

    matching = []
    for layout, (kernel, count) in layouts:
        binding = ParamBinding("filters", "", layout, filters.shape)
        fkkc = binding.to_scratch(filters)
        fkkc = fkkc[..., np.newaxis] if fkkc.ndim == 3 else fkkc
        windows = sliding_window_view(x, (kernel, kernel), axis=(0, 1))  # (h', w', C, K, K)
        if out.shape != windows.shape[:2] + (count,):
            continue
        expected = np.einsum("ijckl,fklc->ijf", windows, fkkc)
        if np.allclose(expected, out, rtol=1e-9, atol=1e-12):
            matching.append((layout, (kernel, count)))
    return matching


def layout_error(label, cls, attribute, shape, channels) -> str:
    if len(shape) == 3:
        return (
            f"{label}: {cls}.{attribute} has shape {shape}, no channel axis, but its input has {channels} channels; a "
            f"conv on {channels} channels holds filters such as (F, K, K, {channels}), (F, {channels}, K, K) or "
            f"(K, K, {channels}, F)"
        )
    return (
        f"{label}: {cls}.{attribute} has shape {shape}, which fits none of (F, K, K, C), (F, C, K, K), (K, K, C, F) "
        f"with C = {channels}, the channels of its input"
    )


def bias_layout(shape: tuple[int, ...]) -> str:
    return "(N,)" if len(shape) == 1 else "(N, 1)" if shape[1] == 1 else "(1, N)"


def conv_output_layout(out_shape: tuple[int, ...], in_shape: tuple[int, ...]) -> str:
    """The layout a conv's output must have, and, for one as large as its input or larger, that the conv pads."""
    layout = "HWC (h - K + 1, w - K + 1, filters)"
    if len(out_shape) != 3 or out_shape[0] < in_shape[0] or out_shape[1] < in_shape[1]:
        return layout
    same = out_shape[:2] == in_shape[:2]
    padded = (
        "'same' padding (the output as large as the input)" if same else "padding (the output larger than the input)"
    )
    return (
        f"{layout}; this looks like {padded}: the networks checked use valid padding, as the tutorial's conv and "
        "PyTorch's default (padding=0) do"
    )
