"""report.json: a versioned document a CI can diff, and the only input report.md is rendered from.

Each run records its architecture (the spec text, its layers with their output shapes), its batch size, the
largest error and share of tolerance of every compared tensor (spec names), and the comparison rows of the steps
report.md shows, so a saved report.json re-renders the same report.md (`reports.markdown.render`).

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

from parity.engine.tolerances import TOLERANCES
from parity.lockstep.stepper import always_compared

if TYPE_CHECKING:  # for annotations only: loading this module loads no part of the experiment
    from parity.engine.compare import TensorComparison
    from parity.lockstep.experiment import ExperimentResult
    from parity.lockstep.stepper import LockstepRecord, StepRecord

# v2: spec-named tensors and layers, `architecture`/`batch_size`/`layers` per run, per-tensor share of tolerance,
# the shown steps' comparison rows (report.md renders from the document alone).
# v3: `layers` carries each layer's own verdict; a diagnosis is a record `{kind, layer, tensor, text, evidence}`.
# Keys added within a version leave it as it is, and readers default them: `near_tie_flips.relu_signs` (0).
SCHEMA = "cnn-parity/report/v3"
VOLATILE_RUN_KEYS = ("seconds",)  # per run: timings differ from run to run
VOLATILE_KEYS = ("environment",)  # top level: versions, threads, commit, time of day

# Run verdicts: a parity claim either passed or diverged; a demonstration (the tutorial-faithful run) is expected
# to diverge and never fails the exit code.
PASSED, DIVERGED, EXPECTED, NO_DIVERGENCE = "passed", "diverged", "expected divergence", "no divergence"
CLAIM, DEMONSTRATION = "parity claim", "demonstration"  # a run's role
ROLES = (CLAIM, DEMONSTRATION)


def verdict(passed: bool, claim: bool) -> str:
    """The one-word outcome of a run."""
    if claim:
        return PASSED if passed else DIVERGED
    return NO_DIVERGENCE if passed else EXPECTED


def percent(fraction: float) -> float:
    """A share of tolerance as a percentage."""
    return 100 * fraction


def run_facts(result: ExperimentResult) -> dict[str, object]:
    """What report.json says of a run that takes reading every step (the costly part of `run_entry`): a function
    of the result alone, so a worker can work it out beside the run's plots."""
    record = result.record
    largest = record.max_abs_error()
    worst = record.worst_step()
    return {
        "max_abs_error": largest,
        "percent_of_tolerance": percent_of_tolerance(record),
        "max_abs_error_at": max_abs_error_at(record, largest),
        "worst_step": None if worst is None else worst_step_entry(worst),
        "shown_steps": shown_steps(record, worst),
        "near_tie_flips": {
            "windows": record.flipped_windows,
            "relu_signs": record.flipped_signs,
            "steps": [step.step for step in record.steps if step.flipped],
            "resynced_steps": list(record.resynced_steps),
        },
    }


def run_entry(
    result: ExperimentResult,
    *,
    claim: bool,
    slug: str,
    plots: dict[str, str],
    facts: dict[str, object] | None = None,
) -> dict[str, object]:
    """One run: what it was, whether it held, where it first diverged, its largest errors, progress, test, time.
    `facts`: `run_facts(result)`, when already worked out."""
    config, record = result.config, result.record
    spec = record.spec  # the run's own spec: a checked implementation's record carries the one it was run on
    facts = run_facts(result) if facts is None else facts
    divergence = record.first_divergence
    return {
        "name": config.name,
        "slug": slug,
        "role": CLAIM if claim else DEMONSTRATION,
        "architecture": spec.text,
        "batch_size": config.batch_size,
        "image_shape": list(spec.image_shape),
        "num_classes": spec.num_classes,
        "layers": layer_entries(record),
        "dtype": config.dtype,
        "tie_policy": config.tie_policy,
        "softmax": config.softmax,
        "mode": config.mode,
        "stride": config.stride,
        "always_compared": list(always_compared(spec, config.mode)),
        "replayed_steps": record.replayed_steps,
        "unreproduced_failures": list(record.unreproduced_failures),
        "config": config.as_dict(),
        "steps": len(record.steps),
        "passed": record.passed,
        "verdict": verdict(record.passed, claim),
        "fails_exit_code": claim and not record.passed,
        "first_divergence": None if divergence is None else divergence_entry(divergence),
        "max_abs_error": facts["max_abs_error"],
        "percent_of_tolerance": facts["percent_of_tolerance"],
        "max_abs_error_at": facts["max_abs_error_at"],
        "worst_step": facts["worst_step"],
        "shown_steps": facts["shown_steps"],
        "near_tie_flips": facts["near_tie_flips"],
        "missing_tensors": list(record.missing_tensors),
        "progress": [dict(line) for line in result.progress],
        "test": {side: dict(values) for side, values in result.test.items()},
        "plots": plots,
        "seconds": dict(record.seconds),
    }


def layer_entries(record: LockstepRecord) -> list[dict[str, object]]:
    """Each layer in order: its spec item and output shape (`spec.describe()`), and its own verdict over the run
    (judged on the reference's inputs: `parity.lockstep.local`), told apart from error it inherited."""
    shapes = {name: (item, shape) for name, item, shape in record.spec.describe()}
    entries = []
    for name, verdict in record.layers.items():
        item, shape = shapes[name]
        entries.append(
            {
                "name": name,
                "kind": verdict.kind,
                "item": item,
                "output_shape": shape,
                "passed": verdict.passed,
                "step": verdict.step,
                "tensor": verdict.tensor,
                "diagnosis": None if verdict.diagnosis is None else verdict.diagnosis.as_dict(),
                "origin": verdict.origin,
                "checked_steps": verdict.checked_steps,
                "implied_steps": verdict.implied_steps,
                "failed_steps": verdict.failed_steps,
                "lockstep_failed_steps": verdict.lockstep_failed_steps,
                "unjudged_steps": verdict.unjudged_steps,
                "first_unjudged_step": verdict.first_unjudged_step,
                "percent_of_tolerance": percent(verdict.worst_tolerance_used),
            }
        )
    return entries


def percent_of_tolerance(record: LockstepRecord) -> dict[str, float]:
    """The largest share of its tolerance each compared tensor used over the run (explained near-tie flips aside)."""
    worst: dict[str, float] = {}
    for step in record.steps:
        for c in step.comparisons:
            if not c.explained:
                worst[c.name] = max(worst.get(c.name, 0.0), percent(c.tolerance_used))
    return {name: worst[name] for name in record.spec.tensor_names if name in worst}


def max_abs_error_at(record: LockstepRecord, largest: dict[str, float]) -> dict[str, dict[str, object]]:
    """Where each tensor's largest |Δ| (`largest`: `record.max_abs_error()`) was first reached, and whether that
    step was an explained near-tie flip."""
    where: dict[str, dict[str, object]] = {}
    for step in record.steps:
        for c in step.comparisons:
            if c.name not in where and c.max_abs_error == largest.get(c.name):
                where[c.name] = {"step": step.step, "explained": bool(c.explained)}
    return {name: where[name] for name in largest if name in where}


def step_entry(step: StepRecord) -> dict[str, object]:
    """One step as report.md shows it: whether it compared every tensor, its tie count, the engine's rows."""
    return {
        "step": step.step,
        "every_tensor_compared": step.full,
        "percent_of_tolerance": percent(step.tolerance_used),
        "tied_windows": step.tied_windows,
        "rows": comparison_rows(step.comparisons),
    }


def comparison_rows(comparisons: Sequence[TensorComparison]) -> list[dict[str, object]]:
    """The comparison engine's own table rows (`TensorComparison.row()`): the numbers the assertion messages use."""
    return [c.row() for c in comparisons]


def shown_steps(record: LockstepRecord, worst: StepRecord | None) -> dict[str, dict[str, object]]:
    """The steps report.md tabulates: the first, the worst (`record.worst_step()`) and the first failing one (each
    once, first name wins)."""
    shown: dict[str, dict[str, object]] = {}
    seen: set[int] = set()
    divergence = record.first_divergence
    by_number = {step.step: step for step in record.steps}
    candidates = [
        ("first", record.steps[0] if record.steps else None),
        ("worst", worst),
        ("first_failing", None if divergence is None else by_number.get(divergence.step)),
    ]
    for key, step in candidates:
        if step is not None and step.step not in seen:
            shown[key] = step_entry(step)
            seen.add(step.step)
    return shown


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
        "diagnosis": divergence.diagnosis.as_dict(),
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
    facts: Sequence[dict[str, object] | None] | None = None,
) -> dict[str, object]:
    """The whole report as JSON-able values (`facts`: each run's `run_facts`, where already worked out)."""
    facts = facts or [None] * len(results)
    runs = [
        run_entry(result, claim=claim, slug=slug, plots=run_plots, facts=run_facts)
        for result, claim, slug, run_plots, run_facts in zip(results, claims, slugs, plots, facts, strict=True)
    ]
    claim_runs = [run for run in runs if run["role"] == CLAIM]
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


def check_verdicts(document: dict[str, object]) -> None:
    """Refuse (ValueError, naming the field) a document whose verdicts are of the wrong type or disagree with each
    other: a report rendered from it must never say PASS where a run it holds diverged."""
    runs = document.get("runs")
    if not isinstance(runs, list) or not all(isinstance(run, dict) for run in runs):
        raise ValueError("runs: expected a list of runs")
    for index, run in enumerate(runs):
        if not isinstance(run.get("passed"), bool):
            raise ValueError(f"runs[{index}].passed: expected true or false, got {run.get('passed')!r}")
        if run.get("role") not in ROLES:
            raise ValueError(f"runs[{index}].role: expected one of {', '.join(ROLES)}, got {run.get('role')!r}")
        claim = run["role"] == CLAIM
        expected = {"verdict": verdict(run["passed"], claim), "fails_exit_code": claim and not run["passed"]}
        for key, value in expected.items():
            if run.get(key) != value or type(run.get(key)) is not type(value):
                raise ValueError(f"runs[{index}].{key}: {run.get(key)!r} does not follow from its passed and role")
        if run["passed"]:  # one way only: a run of `check` that crashed fails with none of these set
            layers = run.get("layers", [])
            wrong_alone = any(isinstance(layer, dict) and layer.get("passed") is False for layer in layers)
            if run.get("first_divergence") is not None or run.get("unreproduced_failures") or wrong_alone:
                raise ValueError(
                    f"runs[{index}].passed: true, yet it records a divergence, an unreproduced failure or a layer "
                    "wrong on its own"
                )
    claims = [run for run in runs if run["role"] == CLAIM]
    expected = {"passed": all(run["passed"] for run in claims), "claims": len(claims)}
    for key, value in expected.items():
        if document.get(key) != value or type(document.get(key)) is not type(value):
            raise ValueError(f"{key}: {document.get(key)!r} does not follow from the runs (expected {value!r})")


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
