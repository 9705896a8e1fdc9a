"""Counting tied 2x2 pool windows, from the reference's own pool input (independent of the code under test)."""

from __future__ import annotations

import numpy as np


def count_tied_windows(pool_input: np.ndarray) -> int:
    """How many (window, channel) pairs of a 2x2/stride-2 pool over `(H, W, C)` have their max more than once."""
    out_h, out_w = pool_input.shape[0] // 2, pool_input.shape[1] // 2
    corners = [pool_input[r : 2 * out_h : 2, c : 2 * out_w : 2] for r in (0, 1) for c in (0, 1)]
    window_max = np.maximum(np.maximum(corners[0], corners[1]), np.maximum(corners[2], corners[3]))
    return int(np.count_nonzero(sum((corner == window_max).astype(np.uint8) for corner in corners) > 1))
