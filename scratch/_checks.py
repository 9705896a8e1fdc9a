"""Argument checks shared by the layers and the network: one clear ValueError, nothing half-done."""

from __future__ import annotations

import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype: object) -> np.dtype:
    """Return `dtype` as a NumPy float dtype, or raise if it is not float32/float64."""
    try:
        resolved = None if dtype is None else np.dtype(dtype)  # np.dtype(None) would quietly mean float64
    except TypeError:
        resolved = None
    # `is None` first: NumPy's dtype == None is True, so `None in FLOAT_DTYPES` would pass.
    if resolved is None or resolved not in FLOAT_DTYPES:
        raise ValueError(f"dtype: expected float32 or float64, got {dtype!r}")
    return resolved


def check_array(name: str, value: object, ndim: int, dtype: np.dtype, finite: bool = True) -> np.ndarray:
    """Check that `value` is an ndarray with `ndim` dims and exactly `dtype`, and (unless told not to) finite."""
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(value).__name__}")
    if value.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {value.shape}")
    if value.dtype != dtype:
        raise ValueError(
            f"{name}: expected dtype {dtype}, got {value.dtype} "
            f"(the layer computes in {dtype}; cast explicitly, nothing is cast silently)"
        )
    if finite and not np.isfinite(value).all():  # the method, not np.all(): half the call overhead
        raise ValueError(f"{name}: contains NaN or Inf at index {_first_bad(value)}")
    return value


def check_image(value: object, shape: tuple[int, int]) -> np.ndarray:
    """Check a raw image: 2-D `shape`, integer or float pixels, finite, within 0..255."""
    if not isinstance(value, np.ndarray):
        raise ValueError(f"image: expected a numpy array, got {type(value).__name__}")
    if value.shape != tuple(shape):
        raise ValueError(f"image: expected shape {tuple(shape)}, got {value.shape}")
    if value.dtype == np.uint8:  # the usual case: always finite and within 0..255, nothing left to check
        return value
    if value.dtype.kind not in "uif":
        raise ValueError(f"image: expected raw pixels as an integer (uint8) or float array, got dtype {value.dtype}")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise ValueError(f"image: contains NaN or Inf at index {_first_bad(value)}")
    low, high = value.min(), value.max()
    if low < 0 or high > 255:
        raise ValueError(
            f"image: expected raw pixel values in 0..255, got range [{low}, {high}] "
            "(the network normalises with x/255 - 0.5 itself; pass the raw digit)"
        )
    return value


def check_images(value: object, shape: tuple[int, int]) -> np.ndarray:
    """Check raw images, one `shape` image or an `(N, *shape)` batch; returns the batch `(N, H, W)`."""
    if isinstance(value, np.ma.MaskedArray):  # its arithmetic skips masked pixels, which the conv then reads raw
        raise ValueError(
            "image: a masked array; every pixel is read, so pass plain pixels (np.ma.filled(images, 0) fills the "
            "masked ones)"
        )
    if isinstance(value, np.ndarray) and type(value) is not np.ndarray:
        value = np.asarray(value)  # np.matrix and other subclasses, whose operators are not an array's
    if isinstance(value, np.ndarray) and value.ndim == 2:
        return check_image(value, shape)[np.newaxis]
    if not isinstance(value, np.ndarray) or value.ndim != 3 or value.shape[1:] != tuple(shape) or not len(value):
        got = value.shape if isinstance(value, np.ndarray) else type(value).__name__
        raise ValueError(f"image: expected shape {tuple(shape)} or a batch (N, {shape[0]}, {shape[1]}), got {got}")
    return check_image(value, value.shape)


def check_labels(value: object, num_classes: int, images: object) -> np.ndarray:
    """Check the labels of `images`: one integer for one image, else one per image; returns them as `(N,)` ints."""
    batch = images.shape[0] if isinstance(images, np.ndarray) and images.ndim == 3 else None
    if batch is None:
        return np.array([check_label(value, num_classes)])
    labels = np.asarray(value)
    if labels.shape != (batch,) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"labels: expected {batch} integer classes for a batch of {batch} images, got {_described(labels, value)}"
        )
    # The range in Python: the reference's step, which checks its labels too, otherwise runs in torch, and two NumPy
    # reductions cost more there than a list of a mini-batch's labels (paired in one process, `parity.benchmark`).
    classes = labels.tolist()
    low, high = min(classes, default=0), max(classes, default=0)
    if low < 0 or high >= num_classes:
        raise ValueError(f"labels: expected classes in 0..{num_classes - 1}, got range [{low}, {high}]")
    return labels


def whole_number(value: object) -> int | None:
    """`value` as an int when it is an integer, Python's or NumPy's (not a bool); else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def check_seed(value: object) -> int:
    """Check a seed: a non-negative integer."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {value!r}")
    return int(value)


def check_label(value: object, num_classes: int) -> int:
    """Check a class label: an integer in 0..num_classes-1."""
    if type(value) is int and 0 <= value < num_classes:  # the usual case, without the numbers.Integral ABC check
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"label: expected an integer class in 0..{num_classes - 1}, got {value!r}")
    if not 0 <= int(value) < num_classes:
        raise ValueError(f"label: expected a class in 0..{num_classes - 1}, got {int(value)}")
    return int(value)


def check_lr(value: object) -> float:
    """Check a learning rate: a finite positive real number."""
    if type(value) is float and 0 < value < math.inf:  # the usual case, checked without a NumPy call (NaN fails)
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"lr: expected a positive finite number, got {value!r}")
    try:
        rate = float(value)  # a Fraction, a NumPy float, an int past float's range (OverflowError)
    except (OverflowError, ValueError, TypeError):
        rate = math.inf
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"lr: expected a positive finite number, got {_brief(value)}")
    return rate


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """Check that `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _brief(value: object, limit: int = 60) -> str:
    """`repr(value)`, cut short past `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _described(array: np.ndarray, value: object) -> str:
    """A value as a message shows it: its repr when short, else its shape and dtype (a batch's labels can be long)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else f"an array of shape {array.shape} and dtype {array.dtype}"


def _first_bad(value: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(~np.isfinite(value))[0])
