"""report.json: a versioned document a CI can diff.

Everything but `environment` (top level) and each run's `seconds` is a function of the runs' configurations and
data, so two runs with the same seed give the same document once those two keys are dropped (`stable_part`).
Non-finite numbers are written as the strings "inf", "-inf" and "nan", so the file is strict JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from parity.tolerances import TOLERANCES

if TYPE_CHECKING:  # torch-free at import time: parity.experiment imports the reference (torch)
    from parity.experiment import ExperimentResult
    from parity.lockstep import StepRecord

SCHEMA = "cnn-parity/report/v1"
VOLATILE_RUN_KEYS = ("seconds",)  # per run: timings differ from run to run
VOLATILE_KEYS = ("environment",)  # top level: versions, threads, commit, time of day

# Run verdicts: a parity claim either passed or diverged; a demonstration (the tutorial-faithful run) is expected
# to diverge and never fails the exit code.
PASSED, DIVERGED, EXPECTED, NO_DIVERGENCE = "passed", "diverged", "expected divergence", "no divergence"


def verdict(passed: bool, claim: bool) -> str:
    """The one-word outcome of a run."""
    if claim:
        return PASSED if passed else DIVERGED
    return NO_DIVERGENCE if passed else EXPECTED


def percent(fraction: float) -> float:
    """A share of tolerance as a percentage."""
    return 100 * fraction


def run_entry(result: ExperimentResult, *, claim: bool, slug: str, plots: dict[str, str]) -> dict[str, object]:
    """One run: what it was, whether it held, where it first diverged, its largest errors, progress, test, time."""
    config, record = result.config, result.record
    worst = record.worst_step()
    divergence = record.first_divergence
    return {
        "name": config.name,
        "slug": slug,
        "role": "parity claim" if claim else "demonstration",
        "dtype": config.dtype,
        "tie_policy": config.tie_policy,
        "softmax": config.softmax,
        "mode": config.mode,
        "stride": config.stride,
        "replayed_steps": record.replayed_steps,
        "unreproduced_failures": list(record.unreproduced_failures),
        "config": config.as_dict(),
        "steps": len(record.steps),
        "passed": record.passed,
        "verdict": verdict(record.passed, claim),
        "fails_exit_code": claim and not record.passed,
        "first_divergence": None if divergence is None else divergence_entry(divergence),
        "max_abs_error": record.max_abs_error(),
        "worst_step": None if worst is None else worst_step_entry(worst),
        "near_tie_flips": {
            "windows": record.flipped_windows,
            "steps": [step.step for step in record.steps if step.flipped_windows],
            "resynced_steps": list(record.resynced_steps),
        },
        "missing_tensors": list(record.missing_tensors),
        "progress": [dict(line) for line in result.progress],
        "test": {side: dict(values) for side, values in result.test.items()},
        "plots": plots,
        "seconds": dict(record.seconds),
    }


def divergence_entry(divergence) -> dict[str, object]:
    """The first out-of-tolerance tensor: its worst element's error against that element's allowance."""
    c = divergence.comparison
    return {
        "step": divergence.step,
        "tensor": divergence.tensor,
        "layer": divergence.layer,
        "abs_error": c.worst_error,
        "allowed": c.worst_allowed,
        "percent_of_tolerance": percent(c.tolerance_used),
        "index": list(c.worst_index),
        "scratch_value": c.scratch_value,
        "reference_value": c.reference_value,
        "max_abs_error": c.max_abs_error,
        "mismatched": c.mismatched,
        "size": c.size,
        "tied_windows": divergence.tied_windows,
        "diagnosis": divergence.diagnosis,
        "message": divergence.message(),
    }


def worst_step_entry(step: StepRecord) -> dict[str, object]:
    """The step that used the largest share of tolerance, and the tensor that used it."""
    counted = [c for c in step.comparisons if not c.explained]
    tensor = max(counted, key=lambda c: c.tolerance_used).name if counted else None
    return {
        "step": step.step,
        "percent_of_tolerance": percent(step.tolerance_used),
        "tensor": tensor,
        "every_tensor_compared": step.full,
    }


def tolerance_entries() -> dict[str, dict[str, object]]:
    """The tolerance table, keyed by dtype name."""
    return {dtype.name: {"atol": t.atol, "rtol": t.rtol, "reason": t.reason} for dtype, t in TOLERANCES.items()}


def build_document(
    results: Sequence[ExperimentResult],
    *,
    claims: Sequence[bool],
    slugs: Sequence[str],
    plots: Sequence[dict[str, str]],
    title: str,
    command: str,
    data_source: str,
    environment: dict[str, object],
) -> dict[str, object]:
    """The whole report as JSON-able values."""
    runs = [
        run_entry(result, claim=claim, slug=slug, plots=run_plots)
        for result, claim, slug, run_plots in zip(results, claims, slugs, plots, strict=True)
    ]
    claim_runs = [run for run in runs if run["role"] == "parity claim"]
    return {
        "schema": SCHEMA,
        "title": title,
        "command": command,
        "data": data_source,
        "passed": all(run["passed"] for run in claim_runs),
        "claims": len(claim_runs),
        "tolerances": tolerance_entries(),
        "environment": environment,
        "runs": runs,
    }


def stable_part(document: dict[str, object]) -> dict[str, object]:
    """The document without what legitimately changes between identical runs (environment, timings)."""
    stable = {key: value for key, value in document.items() if key not in VOLATILE_KEYS}
    stable["runs"] = [
        {key: value for key, value in run.items() if key not in VOLATILE_RUN_KEYS} for run in document["runs"]
    ]
    return stable


def to_json(document: dict[str, object]) -> str:
    """Strict JSON (no NaN/Infinity literals), two-space indented, newline-terminated."""
    return json.dumps(_plain(document), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    return value
