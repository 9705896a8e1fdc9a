"""Timing candidates side by side in one process, one thread each: round-robin rounds, medians, paired ratios, target
rows, and the thread limits and environment line a benchmark prints first."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

WARMUP_STEPS = 20
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")
StepFn = Callable[[int], None]  # runs training step number i (it picks image i modulo the data)


@dataclass(frozen=True)
class Target:
    """A speed target on the ratio to the baseline: at least `at_least` times (slower baseline), or at most
    `at_most` times (a bounded overhead)."""

    at_least: float | None = None
    at_most: float | None = None

    def describe(self) -> str:
        """The target on the ratio column, e.g. `>= 3x` or `<= 1.3x`."""
        return f">= {self.at_least:g}x" if self.at_least is not None else f"<= {self.at_most:g}x"

    def met_by(self, ratio: float) -> bool:
        """Whether `ratio` meets the target."""
        return ratio >= self.at_least if self.at_least is not None else ratio <= self.at_most


@dataclass(frozen=True)
class Row:
    """One candidate's result: median and spread of its per-step time, and how it compares with the baseline."""

    candidate: str
    seconds: float  # median per step
    spread: tuple[float, float]  # fastest and slowest round, per step
    ratio: float  # time per step over the baseline's (above 1: the baseline is faster); see `rows_against`
    target: Target | None = None
    ratio_spread: tuple[float, float] | None = None  # the middle half of the rounds' paired ratios (`middle_half`)

    @property
    def passed(self) -> bool | None:
        """Whether the target is met; None when the row has no target."""
        return None if self.target is None else self.target.met_by(self.ratio)

    @property
    def decisive(self) -> bool | None:
        """Whether the middle half of the rounds agrees with the verdict at both ends (False: the target lies inside
        the machine's noise, and another run may say otherwise); None without a target or a spread."""
        if self.target is None or self.ratio_spread is None:
            return None
        low, high = self.ratio_spread
        return self.target.met_by(low) == self.target.met_by(high)


def time_candidates(
    candidates: Mapping[str, StepFn],
    steps: int | Mapping[str, int],
    repeats: int,
    warmup: int = WARMUP_STEPS,
) -> dict[str, list[float]]:
    """Seconds per step of each candidate in each of `repeats` rounds, timed round-robin (gc off while timing)."""
    steps_of = {name: steps[name] if isinstance(steps, Mapping) else steps for name in candidates}
    names = list(candidates)
    next_step = dict.fromkeys(names, 0)
    for name in names:  # warm caches, allocators and lazy initialisation before anything is timed
        for _ in range(min(warmup, steps_of[name])):
            candidates[name](next_step[name])
            next_step[name] += 1
    samples: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)  # rotate the order: no candidate always follows the same one
        for name in names[shift:] + names[:shift]:
            step, first, count = candidates[name], next_step[name], steps_of[name]
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                started = time.perf_counter()
                for i in range(first, first + count):
                    step(i)
                elapsed = time.perf_counter() - started
            finally:
                if gc_was_enabled:
                    gc.enable()
            samples[name].append(elapsed / count)
            next_step[name] = first + count
    return samples


def median_seconds(samples: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """The median per-step time of each candidate."""
    return {name: statistics.median(values) for name, values in samples.items()}


def paired_ratios(samples: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Candidate time / baseline time in each round, the two timed in the same round."""
    return [mine / theirs for mine, theirs in zip(samples, baseline, strict=True)]


def paired_ratio(samples: Sequence[float], baseline: Sequence[float]) -> float:
    """The median over rounds of `paired_ratios`.

    Pairing cancels what drifts between rounds (another process, CPU frequency), which a ratio of the two
    medians would not."""
    return statistics.median(paired_ratios(samples, baseline))


def ratio_with_spread(samples: Sequence[float], baseline: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """`paired_ratio` and the `middle_half` of the rounds' ratios around it."""
    ratios = paired_ratios(samples, baseline)
    return statistics.median(ratios), middle_half(ratios)


def describe_ratio(samples: Sequence[float], baseline: Sequence[float]) -> str:
    """`2.84x (middle half of rounds 2.80 - 2.90x)`: the paired ratio and its spread, for a section's notes."""
    ratio, (low, high) = ratio_with_spread(samples, baseline)
    return f"{ratio:.2f}x (middle half of rounds {low:.2f} - {high:.2f}x)"


def middle_half(values: Sequence[float]) -> tuple[float, float]:
    """The first and third quartiles of `values` (the one value twice, for one): the range that half the rounds
    fall in, which shows how far one run's median can be trusted on a noisy machine."""
    if len(values) < 2:
        return values[0], values[0]
    first, _, third = statistics.quantiles(values, n=4, method="inclusive")
    return first, third


def rows_against(
    samples: Mapping[str, Sequence[float]], baseline: str, targets: Mapping[str, Target] | None = None
) -> list[Row]:
    """Table rows from `time_candidates` samples, ratios taken against the `baseline` candidate."""
    medians = median_seconds(samples)
    targets = targets or {}
    rows = []
    for name, values in samples.items():
        ratio, ratio_spread = ratio_with_spread(values, samples[baseline])
        rows.append(Row(name, medians[name], (min(values), max(values)), ratio, targets.get(name), ratio_spread))
    return rows


def format_rows(rows: Sequence[Row], baseline: str) -> str:
    """A plain-text table: candidate, median us/step, spread, ratio to the baseline, target, PASS/FAIL."""
    from tabulate import tabulate

    table = [
        [
            row.candidate,
            _microseconds(row.seconds),
            f"{_microseconds(row.spread[0])} - {_microseconds(row.spread[1])}",
            f"{row.ratio:.2f}x",
            "-" if row.ratio_spread is None else f"{row.ratio_spread[0]:.2f} - {row.ratio_spread[1]:.2f}x",
            row.target.describe() if row.target else "-",
            {None: "-", True: "PASS", False: "FAIL"}[row.passed] + (" (within noise)" if row.decisive is False else ""),
        ]
        for row in rows
    ]
    headers = [
        "candidate",
        "us/step (median)",
        "fastest - slowest round",
        f"time / {baseline}",
        "middle half of rounds",
        "target",
        "result",
    ]
    return tabulate(
        table, headers=headers, disable_numparse=True, colalign=("left", "right", "right", "right", "right")
    )


def print_section(title: str, rows: Sequence[Row], baseline: str, notes: Sequence[str] = ()) -> None:
    """Print one section: a title, the table, and any notes."""
    print(f"\n== {title} ==")
    print(format_rows(rows, baseline))
    for note in notes:
        print(note)


def _microseconds(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


def limit_threads() -> tuple[object | None, str]:
    """Limit torch and NumPy's BLAS to one thread; returns the threadpoolctl limiter (if any) and what was done."""
    import torch

    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # not a dependency: used when present
        note = "threadpoolctl not installed: NumPy's BLAS threads are set by OPENBLAS_NUM_THREADS / OMP_NUM_THREADS"
        return None, note
    return threadpool_limits(limits=1, user_api="blas"), "NumPy BLAS limited to 1 thread with threadpoolctl"


def environment_line() -> str:
    """Versions, thread counts and the threading environment variables, in one line."""
    import numpy
    import torch

    from reports.environment import numpy_blas, numpy_blas_kernel, numpy_blas_threads

    blas = f"{numpy_blas()} {numpy_blas_kernel()}, {numpy_blas_threads()} thread(s)"
    env = ", ".join(f"{name}={os.environ[name]}" for name in THREAD_ENV_VARS if name in os.environ) or "none set"
    return (
        f"numpy {numpy.__version__} ({blas}), torch {torch.__version__} ({torch.get_num_threads()} thread(s)), "
        f"Python {platform.python_version()}, {os.cpu_count()} CPU(s); thread env vars: {env}"
    )
