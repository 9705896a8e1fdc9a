"""A lockstep record keeps only what the report reads of past steps: the report is the same, the memory nearly flat."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

import parity.lockstep.retention as retention
from parity.engine.compare import TensorComparison
from parity.lockstep.experiment import ExperimentConfig, run_experiment
from parity.lockstep.retention import ComparisonSummary, SummarisedComparisons
from reports import plots
from reports.writer import build_document
from scratch.data import Dataset

RUNS = {
    "float32 stride 1": ExperimentConfig(dtype="float32", epochs=1),
    "float64 stride 5": ExperimentConfig(dtype="float64", epochs=2, stride=5),
    "tutorial's rule (diverges)": ExperimentConfig(dtype="float64", tie_policy="all", softmax="tutorial", epochs=1),
}


def _small(data: Dataset, n: int) -> Dataset:
    return Dataset(data.images[:n], data.labels[:n], f"first {n}")


def _report(config: ExperimentConfig, train: Dataset, test: Dataset) -> tuple[dict, dict]:
    result = run_experiment(config, train, test)
    document = build_document([result], title="t", command="c", data_source="d")
    for run in document["runs"]:
        run.pop("seconds")
    document.pop("environment", None)
    series = {name: (list(s), list(e)) for name, (s, e) in plots.error_series(result).items()}
    return document, series


@pytest.mark.parametrize("case", RUNS, ids=list(RUNS))
def test_the_report_is_the_same_with_past_steps_summarised(tutorial_data, monkeypatch, case):
    train, test = (_small(part, 150) for part in tutorial_data)
    kept = _report(RUNS[case], train, test)
    # Every step's comparisons kept in full: neither packed when the next is appended, nor at once when it agreed.
    monkeypatch.setattr(retention, "retire", lambda *args: None)
    monkeypatch.setattr(SummarisedComparisons, "agreed", classmethod(lambda cls, batch, cache: batch.comparisons()))
    assert kept == _report(RUNS[case], train, test)


def test_past_steps_hold_summaries_and_the_shown_steps_full_comparisons(tutorial_data):
    train, test = (_small(part, 60) for part in tutorial_data)
    record = run_experiment(RUNS["tutorial's rule (diverges)"], train, test).record
    worst = record.worst_step()
    full = {step.step for step in record.steps if not isinstance(step.comparisons, SummarisedComparisons)}
    assert full == {0, record.first_divergence.step, worst.step, len(record.steps) - 1}
    past = record.steps[5].comparisons
    assert all(isinstance(c, ComparisonSummary) for c in past) and len(past) == len(record.spec.tensor_names)
    assert [c.name for c in past] == list(record.spec.tensor_names)
    assert isinstance(worst.comparisons[0], TensorComparison) and worst.comparisons[0].detailed


def _record_bytes(data: Dataset, steps: int) -> int:
    """Python memory held by a finished lockstep record of `steps` steps (tracemalloc; torch's own allocator aside)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        record = run_experiment(ExperimentConfig(epochs=1), _small(data, steps), _small(data, 1)).record
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(record.steps) == steps
    return held


def test_a_record_grows_by_under_two_kilobytes_a_step(tutorial_data):
    """Measured 0.7-0.8 KB a step (each past step: its StepRecord, losses and packed comparisons); with every
    TensorComparison kept, 7 KB a step: +147 MB over 18,000 more steps of `check`."""
    train, _ = tutorial_data
    _record_bytes(train, 10)  # first-use allocations (caches, workspaces) are not the record's
    per_step = (_record_bytes(train, 140) - _record_bytes(train, 40)) / 100
    assert per_step < 2048, f"{per_step:.0f} bytes a step"


def test_a_summary_reads_like_the_comparison_it_replaces():
    comparison = TensorComparison(
        "conv1.out", (1, 26, 26, 8), "float64", None, 2e-12, 1e-3, 3.0, 1.0, 1, 5408, (0, 1, 2, 3),
        0.5, 0.5 + 2e-12, 2e-12, 1e-12, explained="",
    )  # fmt: skip
    summary = SummarisedComparisons([comparison], {})[0]
    assert (summary.name, summary.max_abs_error, summary.passed, summary.ok) == ("conv1.out", 2e-12, False, False)
    assert summary.tolerance_used == pytest.approx(comparison.tolerance_used) and not summary.detailed
    assert len(SummarisedComparisons([comparison, comparison], {})[-2:]) == 2
