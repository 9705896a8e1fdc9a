"""Shared fixtures: the real MNIST split, and a per-session cache of lockstep experiments (they take seconds)."""

from __future__ import annotations

import pytest

from parity.experiment import ExperimentConfig, ExperimentResult, run_experiment
from scratch.data import Dataset, load_experiment_data

_EXPERIMENTS: dict[ExperimentConfig, ExperimentResult] = {}


@pytest.fixture(scope="session")
def tutorial_data() -> tuple[Dataset, Dataset]:
    """The tutorial's split of real digits: 1,000 train / 1,000 test, seed 0."""
    return load_experiment_data()


@pytest.fixture(scope="session")
def run_tutorial(tutorial_data):
    """Run (once per session) the lockstep tutorial experiment for a config."""

    def run(config: ExperimentConfig) -> ExperimentResult:
        if config not in _EXPERIMENTS:
            _EXPERIMENTS[config] = run_experiment(config, *tutorial_data)
        return _EXPERIMENTS[config]

    return run
