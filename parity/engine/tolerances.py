"""The one table of parity tolerances, keyed by dtype, each with the reason for its size.

An element passes when |scratch - reference| <= atol + rtol * |reference| (the rule of `torch.testing.assert_close`),
with our own numbers: PyTorch's float64 defaults (1e-7) are ~1e8 times looser than what this network reaches and let
a float32 downcast inside a float64 run through (it drifts ~6e-10), so they are not used.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

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
        """`atol 1e-12 + rtol 1e-10 * |reference|`; a per-sample atol keeps its digits (atol 2.5e-06, not 3e-06)."""
        return f"atol {self.atol:.3g} + rtol {self.rtol:.3g}*|reference|"

    def per_sample_of(self, samples: int) -> Tolerance:
        """This tolerance for a per-sample gradient of a loss averaged over `samples`: atol / samples. Each sample's
        gradient, and its rounding, is 1/samples of what it is alone, so the same atol would grow, relative to it,
        with the batch: at batch 500 a float32 input gradient with its sign flipped fitted inside 1e-5."""
        if samples == 1:
            return self
        if not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples: expected a positive number of samples, got {samples!r}")
        return Tolerance(self.atol / samples, self.rtol, f"{self.reason}; atol / {samples} for a per-sample gradient")


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
            "gradients below atol, proven by `parity.diagnosis.flips`; every injected gradient bug is >= 100x larger "
            "(per-sample gradients of a batch under atol / batch: `Tolerance.per_sample_of`)"
        ),
    ),
}


# The roles of the tensors that hold one gradient per sample of the batch (inputs' and outputs' gradients), as
# `scratch.spec.TensorInfo.role` names them: of a mean loss, each is 1/N of that sample's own.
PER_SAMPLE_GRADIENTS = ("d_in", "d_out")


def tolerance_for(dtype: object, role: str = "", samples: int = 1) -> Tolerance:
    """The tolerance of `dtype` (only float32 and float64 have one), for a tensor of `role` in a step of a loss
    averaged over `samples` (`Tolerance.per_sample_of` for the per-sample gradients)."""
    try:
        tolerance = TOLERANCES[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise ValueError(f"no parity tolerance for dtype {dtype!r}: expected float32 or float64") from None
    return tolerance.per_sample_of(samples) if role in PER_SAMPLE_GRADIENTS else tolerance


@functools.lru_cache(maxsize=64)
def tensor_tolerances(tensors: tuple, dtype: np.dtype, samples: int) -> Mapping[str, Tolerance]:
    """`tolerance_for` each of `tensors` (hashable objects with a `name` and a `role`, as a spec's `tensors`), by
    name; made once per spec, dtype and batch size, and read-only."""
    return MappingProxyType({info.name: tolerance_for(dtype, info.role, samples) for info in tensors})
