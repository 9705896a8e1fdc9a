"""The one table of parity tolerances, keyed by dtype, each with the reason for its size.

An element passes when |scratch - reference| <= atol + rtol * |reference| (the rule of `torch.testing.assert_close`),
with our own numbers: PyTorch's float64 defaults (1e-7) are ~1e8 times looser than what this network reaches and let
a float32 downcast inside a float64 run through (it drifts ~6e-10), so they are not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Allowed error per element: atol + rtol * |reference|."""

    atol: float
    rtol: float
    reason: str

    def allowed(self, reference: np.ndarray) -> np.ndarray:
        """The allowance for each element of `reference`."""
        return self.atol + self.rtol * np.abs(reference)

    def describe(self) -> str:
        """`atol 1e-12 + rtol 1e-10 * |reference|`."""
        return f"atol {self.atol:.0e} + rtol {self.rtol:.0e}*|reference|"


TOLERANCES: dict[np.dtype, Tolerance] = {
    np.dtype(np.float64): Tolerance(
        atol=1e-12,
        rtol=1e-10,
        reason=(
            "measured over 3 epochs x 1,000 real MNIST steps, seeds 0-3, free-running and teacher-forced: the largest "
            "error is 4.4e-14, 0.52% of this allowance, with OpenBLAS's default kernel (5.0e-14, 0.67%, under "
            "OPENBLAS_CORETYPE=Haswell); over one epoch of 8 specs up to two convs, "
            "5x5 kernels, biases, ReLUs and two dense layers, at batch 1 and 8: at most 0.4%; a float32 round trip "
            "anywhere (>= 1e-9) fails"
        ),
    ),
    np.dtype(np.float32): Tolerance(
        atol=1e-5,
        rtol=1e-5,
        reason=(
            "measured over the same runs: up to 61% of this allowance, on the logits (a 1,352-term float32 dot product "
            "summed in a different order by NumPy and PyTorch); over the 8 deeper specs, arithmetic error stays under "
            "28% (logits after a 5x5 conv); pool and conv input gradients reach 99.7% (every step compared, Haswell "
            "kernel), all of it near-tie flips of "
            "gradients below atol, proven by `parity.diagnosis.flips`; every injected gradient bug is >= 100x larger"
        ),
    ),
}


def tolerance_for(dtype: object) -> Tolerance:
    """The tolerance of `dtype`; only float32 and float64 have one."""
    try:
        return TOLERANCES[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise ValueError(f"no parity tolerance for dtype {dtype!r}: expected float32 or float64") from None
