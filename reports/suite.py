"""The report from a pytest run (`pytest --parity-report DIR`): the experiments the suite ran, plus any default run
of `cnn-parity report` it did not, written by the same writer as the command."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from parity.lockstep.experiment import ExperimentConfig, ExperimentResult, run_experiment
from reports.command import TITLE, Options, configs
from reports.writer import write_report
from scratch.spec import DEFAULT_SPEC


def default_configs() -> tuple[list[ExperimentConfig], set[ExperimentConfig]]:
    """The runs of a plain `cnn-parity report`, and which of them are demonstrations."""
    options = Options(
        out=Path("unused"),
        arch=DEFAULT_SPEC,
        batch_size=1,
        epochs=3,
        train_size=1000,
        test_size=1000,
        seed=0,
        dtypes=("float64", "float32"),
        tie_policy="first",
        data_dir=None,
        stride=1,
        mode="free",
        faithful=True,
    )
    return configs(options)


def write_suite_report(
    out_dir: str | os.PathLike,
    experiments: Mapping[ExperimentConfig, ExperimentResult],
    *,
    defaults: Iterable[ExperimentConfig] | None = None,
    data: tuple | None = None,
    run: Callable[..., ExperimentResult] = run_experiment,
) -> Path:
    """Write the report of `experiments` (a suite's cache), first running each of `defaults` it lacks.

    `data` is the (train, test) pair the suite's experiments used (default: `load_experiment_data()`, the
    conftest's `tutorial_data`). Returns report.md's path.
    """
    defaults = default_configs()[0] if defaults is None else list(defaults)
    results = dict(experiments)
    missing = [config for config in defaults if config not in results]
    if data is None:
        from scratch.splits import load_experiment_data

        data = load_experiment_data()
    for config in missing:
        results[config] = run(config, *data)
    ordered = [config for config in defaults if config in results]
    ordered += [config for config in results if config not in ordered]
    return write_report(
        out_dir,
        [results[config] for config in ordered],
        title=f"{TITLE} (from the test suite)",
        command="pytest --parity-report " + str(out_dir),
        data_source=data[0].source,
        demonstrations=None,  # as in the command: the runs without PyTorch's semantics are demonstrations
    )
