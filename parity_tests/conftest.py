"""Shared fixtures: the real MNIST split, and a per-session cache of lockstep experiments (they take seconds)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from parity.lockstep.experiment import ExperimentConfig, ExperimentResult, run_experiment
from scratch.data import Dataset
from scratch.splits import load_experiment_data

_EXPERIMENTS: dict[ExperimentConfig, ExperimentResult] = {}


@pytest.fixture(scope="session")
def tutorial_data() -> tuple[Dataset, Dataset]:
    """The tutorial's split of real digits: 1,000 train / 1,000 test, seed 0."""
    return load_experiment_data()


@pytest.fixture(scope="session")
def run_tutorial(tutorial_data):
    """Run (once per session) the lockstep experiment of a config on the tutorial's data.

    `run(config)`, or `run(arch=..., batch_size=..., dtype=...)` for the default config with those fields changed
    (or `run(config, batch_size=4)`); any spec fits the tutorial's 28x28 digits. The cache is keyed by the whole
    config, architecture and batch size included, so two specs never share a result.
    """

    def run(config: ExperimentConfig | None = None, **fields: object) -> ExperimentResult:
        config = dataclasses.replace(config or ExperimentConfig(), **fields)
        if config not in _EXPERIMENTS:
            _EXPERIMENTS[config] = run_experiment(config, *tutorial_data)
        return _EXPERIMENTS[config]

    return run


# --- `pytest --parity-report DIR`: the lockstep report, from the experiments this session ran --------------------


@pytest.fixture
def path_env(tmp_path) -> dict[str, str]:
    """This environment with `tmp_path` first on PYTHONPATH: where a fork server, which takes no sys.path from its
    caller, finds a module a test wrote there."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--parity-report",
        metavar="DIR",
        default=None,
        help="after the run, write the lockstep report (report.md, report.json, plots) of the experiments the "
        "suite ran into DIR, running any default `cnn-parity report` run the suite did not",
    )


def pytest_configure(config: pytest.Config) -> None:
    out = config.getoption("--parity-report", None)
    if out:
        from reports.writer import check_destination

        try:
            check_destination(out, option="--parity-report")  # fail before the suite runs, not after
        except OSError as error:
            named = str(error) if "--parity-report" in str(error) else f"--parity-report: {error}"
            raise pytest.UsageError(named) from None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = session.config.getoption("--parity-report", None)
    if not out or hasattr(session.config, "workerinput"):  # xdist workers: the controller writes the report
        return
    if exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR, pytest.ExitCode.USAGE_ERROR):
        return
    from reports.suite import write_suite_report

    try:
        path = write_suite_report(out, _EXPERIMENTS)
    except (OSError, ValueError) as error:  # DataError is a ValueError
        _REPORT_LINES.append((f"--parity-report: error: {error}", True))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    _REPORT_LINES.append((f"parity report written: {path}", False))


# What the report writing said, shown with the summary: pytest's terminal is mid-line (the progress) when the
# session finishes, and plugins' lines belong to the summary.
_REPORT_LINES: list[tuple[str, bool]] = []


def pytest_terminal_summary(terminalreporter) -> None:
    for line, failed in _REPORT_LINES:
        terminalreporter.write_line(line, red=failed)
