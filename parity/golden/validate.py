"""A golden record checked before it is used: its checksums, and the type and range of every field.

`cnn-parity record` stores a SHA-256 checksum of every section of the record (`sha256`: section -> digest of its
canonical JSON). `read_golden` refuses, in one line naming the field, anything `record` could not have written: a
missing or unknown field, a value of the wrong type or out of range (a config value, a checkpoint step outside the
run or out of order, a sample index outside its tensor), or a section whose content no longer matches its checksum
(edited or damaged after it was written). A hand-written check, not a schema library: most rules relate one field
to another (steps to epochs, indices to the spec's tensor sizes, checkpoints to `every`).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re

from scratch.loss import SOFTMAX_MODES
from scratch.maxpool import TIE_POLICIES
from scratch.network import IMPLEMENTATIONS
from scratch.spec import NetworkSpec, parse_spec
from scratch.splits import MAX_STEPS, steps_per_epoch

CHECKSUMS = "sha256"  # the field holding the checksums
NOT_CHECKSUMMED = ("format", CHECKSUMS)
REQUIRED = (
    "format",
    CHECKSUMS,
    "about",
    "config",
    "data",
    "environment",
    "tolerance",
    "sample_indices",
    "loss",
    "correct",
    "checkpoints",
)
OPTIONAL = ("reencoded",)  # a note on how a record was carried over from an older format
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DTYPES = ("float32", "float64")


class BadField(ValueError):
    """One field of a golden record is unusable: `field` names it (`config.seed`, `checkpoints[3].step`)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


def section_checksum(value: object) -> str:
    """SHA-256 of a section's canonical JSON (sorted keys, no spaces): the same value always gives the same digest."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def checksums(document: dict) -> dict[str, str]:
    """The checksum of every section of `document` but the format and the checksums themselves."""
    return {key: section_checksum(value) for key, value in document.items() if key not in NOT_CHECKSUMMED}


def check_document(document: dict) -> dict:
    """The record's config as a dict of checked values, or BadField for the first unusable field."""
    _check_keys("the record", document, REQUIRED, OPTIONAL, prefix="")
    config, spec = document["config"], _check_config(document["config"], document["data"])
    _text(document["about"], "about")
    if "reencoded" in document:
        _text(document["reencoded"], "reencoded")
    _check_environment(document["environment"])
    _check_tolerance(document["tolerance"])
    sizes = sample_sizes(spec)
    indices = _check_sample_indices(document["sample_indices"], sizes)
    _check_losses(document["loss"], config["steps"])
    _check_correct(document["correct"], config)
    _check_checkpoints(document["checkpoints"], config, spec, indices)
    _check_checksums(document)
    return config


def sample_sizes(spec: NetworkSpec) -> dict[str, int]:
    """Elements of each named tensor of one sample (the batch axis dropped; parameters whole): where sample indices
    may point."""
    sizes = {}
    for info in spec.tensors:
        if info.role in ("probs", "d_out"):
            shape = (spec.num_classes,)
        elif info.role == "loss":
            shape = ()
        elif info.role in ("d_param", "param"):
            shape = dict(spec.layer(info.layer).params)[info.param]
        else:
            layer = spec.layer(info.layer)
            shape = layer.out_shape if info.role == "out" else layer.in_shape
        sizes[info.name] = math.prod(shape)
    return sizes


def batch_of(step: int, config: dict) -> int:
    """Images in step `step`'s batch: `batch_size`, or fewer in the last batch of an epoch."""
    within = step % steps_per_epoch(config["n_train"], config["batch_size"])
    return min(config["batch_size"], config["n_train"] - within * config["batch_size"])


def checkpoint_steps(steps: int, every: int) -> list[int]:
    """The steps a record keeps digests and samples at: every `every`-th and the last."""
    return sorted({*range(0, steps, every), steps - 1})


# --- sections ---------------------------------------------------------------------------------------------------


def _check_config(config: object, data: object) -> NetworkSpec:
    fields = (
        "arch",
        "batch_size",
        "seed",
        "dtype",
        "lr",
        "epochs",
        "n_train",
        "tie_policy",
        "softmax",
        "impl",
        "steps",
        "every",
    )
    _check_keys("config", config, fields)
    _check_keys("data", data, ("source", "train_sha256", "shape"))
    _text(config["arch"], "config.arch")
    _integer(config["batch_size"], "config.batch_size", 1)
    _integer(config["seed"], "config.seed", 0)
    _choice(config["dtype"], "config.dtype", _DTYPES)
    _positive_number(config["lr"], "config.lr")
    _integer(config["epochs"], "config.epochs", 1)
    _integer(config["n_train"], "config.n_train", 1)
    _choice(config["tie_policy"], "config.tie_policy", TIE_POLICIES)
    _choice(config["softmax"], "config.softmax", SOFTMAX_MODES)
    _choice(config["impl"], "config.impl", IMPLEMENTATIONS)
    _integer(config["every"], "config.every", 1)
    total = config["epochs"] * steps_per_epoch(config["n_train"], config["batch_size"])
    _integer(config["steps"], "config.steps", 1, min(total, MAX_STEPS))
    _text(data["source"], "data.source")
    _digest(data["train_sha256"], "data.train_sha256")
    shape = _list(data["shape"], "data.shape", 3)
    for index, size in enumerate(shape):
        _integer(size, f"data.shape[{index}]", 1)
    if shape[0] != config["n_train"]:
        raise BadField("data.shape[0]", f"expected config.n_train = {config['n_train']} images, got {shape[0]!r}")
    try:
        return parse_spec(config["arch"], tuple(shape[1:]))
    except ValueError as error:
        raise BadField("config.arch", str(error)) from None


def _check_environment(environment: object) -> None:
    if not isinstance(environment, dict):
        raise BadField("environment", f"expected a mapping of names to text, got {_shown(environment)}")
    for key, value in environment.items():
        _text(value, f"environment.{key}")


def _check_tolerance(tolerance: object) -> None:
    _check_keys("tolerance", tolerance, ("atol", "rtol", "reason"))
    for key in ("atol", "rtol"):
        value = tolerance[key]
        if not _is_number(value) or not 0 <= value < math.inf:
            raise BadField(f"tolerance.{key}", f"expected a finite number >= 0, got {_shown(value)}")
    _text(tolerance["reason"], "tolerance.reason")


def _check_sample_indices(indices: object, sizes: dict[str, int]) -> dict[str, list[int]]:
    _check_keys("sample_indices", indices, tuple(sizes))
    for name, size in sizes.items():
        chosen = indices[name]
        where = f"sample_indices.{name}"
        if not isinstance(chosen, list) or not chosen:
            raise BadField(where, f"expected a non-empty list of flat indices, got {_shown(chosen)}")
        for position, index in enumerate(chosen):
            _integer(index, f"{where}[{position}]", 0, size - 1, f"a flat index inside {name} ({size} elements)")
        if len(set(chosen)) != len(chosen):
            raise BadField(where, f"expected distinct indices, got {_shown(chosen)}")
    return indices


def _check_losses(losses: object, steps: int) -> None:
    _list(losses, "loss", steps, f"one loss per step ({steps})")
    for step, value in enumerate(losses):
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise BadField(f"loss[{step}]", f"expected a finite number >= 0 (the step's loss), got {_shown(value)}")


def _check_correct(correct: object, config: dict) -> None:
    steps = config["steps"]
    _list(correct, "correct", steps, f"one count per step ({steps})")
    for step, value in enumerate(correct):
        batch = batch_of(step, config)
        _integer(value, f"correct[{step}]", 0, batch, f"a count of images classified right, 0..{batch}")


def _check_checkpoints(checkpoints: object, config: dict, spec: NetworkSpec, indices: dict[str, list[int]]) -> None:
    steps = config["steps"]
    expected = checkpoint_steps(steps, config["every"])
    expected_set = set(expected)
    _list(checkpoints, "checkpoints", None)
    previous = -1
    for position, checkpoint in enumerate(checkpoints):
        where = f"checkpoints[{position}]"
        _check_keys(where, checkpoint, ("step", "digests", "samples"))
        step = checkpoint["step"]
        _integer(step, f"{where}.step", 0, steps - 1, f"a step of the run, 0..{steps - 1}")
        if step <= previous:
            raise BadField(f"{where}.step", f"expected a step after the previous checkpoint's {previous}, got {step}")
        if step not in expected_set:
            raise BadField(
                f"{where}.step", f"expected a checkpoint step (every {config['every']} steps and the last), got {step}"
            )
        if step != expected[position]:
            raise BadField(f"{where}.step", f"expected step {expected[position]} (a checkpoint is missing), got {step}")
        previous = step
        _check_keys(f"{where}.digests", checkpoint["digests"], spec.parameter_names)
        for name, value in checkpoint["digests"].items():
            _digest(value, f"{where}.digests.{name}")
        _check_keys(f"{where}.samples", checkpoint["samples"], tuple(indices))
        for name, values in checkpoint["samples"].items():
            _list(values, f"{where}.samples.{name}", len(indices[name]), f"one value per sample index of {name}")
            for index, value in enumerate(values):
                if not _is_number(value) or not math.isfinite(value):
                    raise BadField(f"{where}.samples.{name}[{index}]", f"expected a finite number, got {_shown(value)}")
    if len(checkpoints) != len(expected):
        missing = sorted(set(expected) - {cp["step"] for cp in checkpoints})
        raise BadField(
            "checkpoints", f"expected {len(expected)} checkpoints, got {len(checkpoints)}: no step {missing[0]}"
        )


def _check_checksums(document: dict) -> None:
    stored = document[CHECKSUMS]
    sections = tuple(key for key in document if key not in NOT_CHECKSUMMED)
    _check_keys(CHECKSUMS, stored, sections)
    for section in sections:
        _digest(stored[section], f"{CHECKSUMS}.{section}")
        if section_checksum(document[section]) != stored[section]:
            raise BadField(section, "its content does not match its checksum: edited or damaged after it was recorded")


# --- values -----------------------------------------------------------------------------------------------------


def _check_keys(
    where: str, value: object, required: tuple[str, ...], optional: tuple[str, ...] = (), prefix: str | None = None
) -> None:
    prefix = f"{where}." if prefix is None else prefix
    if not isinstance(value, dict):
        raise BadField(where, f"expected a mapping with {', '.join(required)}, got {_shown(value)}")
    missing = [key for key in required if key not in value]
    if missing:
        raise BadField(f"{prefix}{missing[0]}", "missing")
    unknown = [key for key in value if key not in required and key not in optional]
    if unknown:
        raise BadField(f"{prefix}{unknown[0]}", f"unknown field (expected {', '.join(required + optional)})")


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _integer(value: object, where: str, low: int, high: float = math.inf, what: str | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        if what is None:
            what = f"an integer >= {low}" if high == math.inf else f"an integer in {low}..{high}"
        raise BadField(where, f"expected {what}, got {_shown(value)}")
    return value


def _positive_number(value: object, where: str) -> float:
    if not _is_number(value) or not 0 < value < math.inf:
        raise BadField(where, f"expected a finite number > 0, got {_shown(value)}")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise BadField(where, f"expected text, got {_shown(value)}")
    return value


def _choice(value: object, where: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise BadField(where, f"expected one of {', '.join(map(repr, choices))}, got {_shown(value)}")
    return value


def _digest(value: object, where: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise BadField(where, f"expected a SHA-256 digest (64 hex digits), got {_shown(value)}")
    return value


def _list(value: object, where: str, length: int | None, what: str | None = None) -> list:
    if not isinstance(value, list):
        raise BadField(where, f"expected a list{f' of {what}' if what else ''}, got {_shown(value)}")
    if length is not None and len(value) != length:
        raise BadField(where, f"expected {what or f'{length} items'}, got {len(value)} items")
    return value


def _shown(value: object) -> str:
    """A value as a message shows it: its repr, shortened; containers by their type and length."""
    if isinstance(value, (list, dict)):
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
