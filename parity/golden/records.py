"""Golden records of the scratch run: `cnn-parity record` writes one, `cnn-parity compare-golden FILE` checks it.

A golden record is a small gzipped JSON file of one scratch training run (the tutorial's default: spec
conv3x8,pool2,dense10, batch 1, float64, seed 0, first-max ties, stable softmax, 3 epochs x 1,000 real digits):
every step's loss and number classified right, and every
`every` steps (and at the last step) a SHA-256 digest of each parameter plus a few tensor elements at fixed flat
indices (every named tensor of the step, and the parameters after the update), with the config, a fingerprint of
the data and the environment. `compare-golden` reruns scratch alone, with NumPy only (torch is never imported),
and reports the first step whose loss or sampled elements leave the float64 parity tolerance
(`parity.engine.tolerances`). Digests are reported but do not decide: another BLAS or NumPy build may round differently
in the last bit, which the tolerance allows; a change to `scratch/` that moves the numbers does not get through.

Step s means: the loss of the forward pass on the s-th batch (0-based, over all epochs), and the parameters
after that step's update. A change to the update at step s therefore shows in the samples at s (when s is a
checkpoint) or in the loss at s + 1.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from parity import atomic
from parity.cli.errors import UsageError
from parity.engine.tolerances import tensor_tolerances, tolerance_for
from parity.golden.validate import CHECKSUMS, BadField, check_document, checksums
from scratch.data import special_file
from scratch.network import Network, StepTrace, build_network
from scratch.spec import DEFAULT_SPEC, NetworkSpec, parse_spec
from scratch.splits import batches, epoch_orders, steps_per_epoch

# /2: tensors named by the spec (conv1.out, ...), the spec and batch size stored. /3: a SHA-256 checksum of every
# section (`parity.golden.validate`), and sample indices of batched tensors inside the first sample.
FORMAT = "cnn-parity-golden/3"
GOLDEN_NAME = "parity/golden/tutorial-float64-seed0.json.gz"
# The shipped record: package data, so `compare-golden` finds it from any install, editable or not.
DEFAULT_PATH = Path(__file__).resolve().parent / "tutorial-float64-seed0.json.gz"
DEFAULT_EVERY = 100
SAMPLES_PER_TENSOR = 4


def is_shipped(path: Path) -> bool:
    """Whether `path` names the shipped golden record, through any spelling or link, in any letter case: this
    install's, or the one in any clone or copy of the package (`parity/golden/<its name>`)."""
    try:
        resolved = path.resolve()
        if resolved.exists() and DEFAULT_PATH.exists() and os.path.samefile(resolved, DEFAULT_PATH):
            return True  # another name for the very file (a case-insensitive file system, a hard link)
    except (OSError, RuntimeError):  # a path that cannot be resolved (a link loop) is not the shipped file
        return False
    return [part.casefold() for part in resolved.parts[-3:]] == [part.casefold() for part in Path(GOLDEN_NAME).parts]


@dataclass(frozen=True)
class GoldenConfig:
    """The scratch run a golden record holds (the tutorial's experiment by default)."""

    arch: str = DEFAULT_SPEC
    batch_size: int = 1
    seed: int = 0
    dtype: str = "float64"
    lr: float = 0.005
    epochs: int = 3
    n_train: int = 1000
    tie_policy: str = "first"
    softmax: str = "stable"
    impl: str = "vectorized"
    steps: int = 3000  # at most epochs * ceil(n_train / batch_size)
    every: int = DEFAULT_EVERY

    def spec(self, image_shape: tuple[int, int]) -> NetworkSpec:
        """The network spec, parsed for the data's image size."""
        return parse_spec(self.arch, tuple(image_shape))

    @property
    def steps_per_epoch(self) -> int:
        """ceil(n_train / batch_size): the last partial batch is trained on as it is."""
        return steps_per_epoch(self.n_train, self.batch_size)

    def is_checkpoint(self, step: int) -> bool:
        """Digests and samples are kept at every `every`-th step and at the last one."""
        return step % self.every == 0 or step == self.steps - 1


def scratch_steps(
    config: GoldenConfig, images: np.ndarray, labels: np.ndarray
) -> Iterator[tuple[int, StepTrace, Network]]:
    """Train scratch as the tutorial does (seeded reshuffle every epoch), yielding each step after its update."""
    net = build_network(
        config.spec(images.shape[1:]),
        config.seed,
        config.dtype,
        tie_policy=config.tie_policy,
        softmax=config.softmax,
        impl=config.impl,
    )
    step = 0
    for order in epoch_orders(len(labels), config.epochs, config.seed):
        for index in batches(order, config.batch_size):
            if step >= config.steps:
                return
            trace = net.forward_backward(images[index], labels[index])
            net.update(config.lr)
            yield step, trace, net
            step += 1


def digest(array: np.ndarray) -> str:
    """SHA-256 of the array's dtype, shape and little-endian bytes."""
    array = np.ascontiguousarray(array)
    header = f"{array.dtype.str}{array.shape}".encode()
    return hashlib.sha256(header + array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()).hexdigest()


def data_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the training images and labels, so a golden is never compared on other data."""
    return hashlib.sha256(np.ascontiguousarray(images).tobytes() + np.ascontiguousarray(labels).tobytes()).hexdigest()


def _tensors(trace: StepTrace, net: Network) -> dict[str, np.ndarray]:
    return {**trace.tensors, **net.parameters()}


def _sample_indices(tensors: dict[str, np.ndarray], spec: NetworkSpec) -> dict[str, list[int]]:
    """Fixed flat indices per tensor: its largest |element| at step 0 and three evenly spaced ones.

    A tensor with a batch axis is sampled in its first sample (its first elements, flat), which every batch has,
    the short last batch of an epoch too."""
    indices = {}
    for name in tensors:
        batched = spec.tensor(name).role not in ("loss", "d_param", "param")
        flat = np.asarray(tensors[name][0] if batched else tensors[name]).reshape(-1)
        chosen = [int(np.argmax(np.abs(flat)))] + [
            flat.size * k // SAMPLES_PER_TENSOR for k in range(1, SAMPLES_PER_TENSOR)
        ]
        indices[name] = list(dict.fromkeys(chosen))
    return indices


def record_golden(config: GoldenConfig, images: np.ndarray, labels: np.ndarray, data_source: str) -> dict:
    """Run scratch and build the golden document."""
    losses, correct, checkpoints, indices = [], [], [], {}
    for step, trace, net in scratch_steps(config, images, labels):
        losses.append(float(trace.loss))
        correct.append(trace.correct)
        if config.is_checkpoint(step):
            tensors = _tensors(trace, net)
            indices = indices or _sample_indices(tensors, net.spec)
            checkpoints.append(
                {
                    "step": step,
                    "digests": {name: digest(tensors[name]) for name in net.parameters()},
                    "samples": {name: _take(tensors[name], indices[name]) for name in indices},
                }
            )
    if len(losses) != config.steps:
        raise UsageError(f"the data give only {len(losses)} steps, fewer than the {config.steps} asked for")
    if not np.isfinite(losses).all():
        step = int(np.flatnonzero(~np.isfinite(losses))[0])
        raise UsageError(f"the run's loss is not finite from step {step} on ({losses[step]}); nothing to record")
    return seal(
        {
            "format": FORMAT,
            "about": "per-step loss and correctness of a scratch run; digests and sampled elements at checkpoints",
            "config": asdict(config),
            "data": {
                "source": data_source,
                "train_sha256": data_fingerprint(images, labels),
                "shape": list(images.shape),
            },
            "environment": environment(),
            "tolerance": asdict(tolerance_for(config.dtype)),
            "sample_indices": indices,
            "loss": losses,
            "correct": correct,
            "checkpoints": checkpoints,
        }
    )


def seal(document: dict) -> dict:
    """`document` with the checksum of each of its sections, placed after its format (`parity.golden.validate`)."""
    content = {key: value for key, value in document.items() if key not in ("format", CHECKSUMS)}
    return {"format": document["format"], CHECKSUMS: checksums(content), **content}


def _take(array: np.ndarray, indices: list[int]) -> list[float]:
    flat = np.asarray(array).reshape(-1)
    return [float(flat[i]) for i in indices]


def environment() -> dict[str, str]:
    """Where a record is made: Python, platform, NumPy and its BLAS, the git commit."""
    env = {"python": platform.python_version(), "platform": platform.platform(), "numpy": np.__version__}
    try:
        from reports.environment import git_commit, numpy_blas

        env.update(numpy_blas=numpy_blas(), git_commit=git_commit())
    except ImportError:  # the report package is optional for a golden record
        pass
    return env


def write_golden(document: dict, path: Path) -> Path:
    """Write gzipped JSON atomically (a temporary file renamed into place); mtime 0, so equal runs give equal bytes."""
    payload = gzip.compress(json.dumps(document, separators=(",", ":")).encode(), compresslevel=9, mtime=0)
    return atomic.write_bytes(Path(path), payload)


# Far above any record (the shipped one of 3,000 steps is ~150 KB): a file this large is not one.
MAX_RECORD_BYTES = 256 * 1024 * 1024


def _gunzip(raw: bytes) -> bytes:
    """The gzipped `raw` unpacked, at most one byte past MAX_RECORD_BYTES of it (memory stays bounded)."""
    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as unpacked:
        return unpacked.read(MAX_RECORD_BYTES + 1)


def read_golden(path: str | os.PathLike) -> dict:
    """Read and validate a golden record; UsageError (one line) for anything unusable."""
    path = Path(path)
    try:
        if special_file(path):
            raise UsageError(f"{path}: not a regular file, expected a golden record (.json.gz)")
        if path.is_file() and path.stat().st_size > MAX_RECORD_BYTES:
            raise UsageError(f"{path}: {path.stat().st_size:,} bytes, larger than any golden record; not one")
        raw = path.read_bytes()
    except FileNotFoundError:
        if is_shipped(path):
            raise UsageError(
                f"{path}: the shipped golden record is missing; restore it (`git checkout -- {GOLDEN_NAME}` in a "
                "clone, or reinstall the package) rather than recording a new one, which would guard nothing"
            ) from None
        raise UsageError(f"{path}: no such golden record; write one with `cnn-parity record --out {path}`") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, expected a golden record (.json.gz)") from None
    except OSError as error:
        raise UsageError(f"{path}: cannot read the golden record ({error.strerror or error})") from None
    if not raw:
        raise UsageError(f"{path}: empty file, expected a golden record (.json.gz) written by `cnn-parity record`")
    try:
        text = _gunzip(raw) if raw[:2] == b"\x1f\x8b" else raw
        if len(text) > MAX_RECORD_BYTES:  # read only this far: a small file can unpack to any size
            raise UsageError(f"{path}: unpacks to more than {MAX_RECORD_BYTES:,} bytes, larger than any golden record")
        document = json.loads(text)
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise UsageError(f"{path}: not a golden record (gzipped JSON expected): {error}") from None
    except RecursionError:  # JSON nested thousands deep: no record is
        raise UsageError(f"{path}: not a golden record (its JSON is nested too deep to read)") from None
    if not isinstance(document, dict):
        what = {type(None): "null", list: "a list", str: "a string"}.get(type(document), "a number or true/false")
        raise UsageError(f"{path}: not a golden record (its JSON is {what}, not an object); pass the file record wrote")
    if document.get("format") != FORMAT:
        found = document.get("format")
        older = " (it has no checksums)" if found in ("cnn-parity-golden/1", "cnn-parity-golden/2") else ""
        raise UsageError(f"{path}: format {found!r}{older}, expected {FORMAT!r}; re-record it with `cnn-parity record`")
    try:
        config = check_document(document)
    except BadField as error:
        raise UsageError(
            f"{path}: damaged or hand-edited golden record, refused: {error}; re-record it with `cnn-parity record`"
        ) from None
    document["config"] = GoldenConfig(**config)
    return document


@dataclass
class Departure:
    """The first place the rerun left the golden record."""

    step: int
    what: str  # "loss", "correct", or "<tensor>[flat index]"
    value: float
    golden: float
    error: float
    allowed: float

    def message(self, config: GoldenConfig) -> str:
        """`step 1235 (epoch 2, image 235): loss 0.41 vs golden 0.40, |error| 1e-2 > 1.1e-11 allowed`."""
        epoch, within = divmod(self.step, config.steps_per_epoch)
        return (
            f"step {self.step} (epoch {epoch + 1}, step {within} of {config.steps_per_epoch}): "
            f"{self.what} {self.value!r} "
            f"vs golden {self.golden!r}, |error| {self.error:.3g} > {self.allowed:.3g} allowed"
        )


@dataclass
class GoldenComparison:
    """What a rerun found: the first departure (if any), and how close the agreeing part was."""

    steps_run: int = 0
    checkpoints: int = 0
    bit_exact_checkpoints: int = 0
    first_digest_difference: int | None = None
    max_loss_error: float = 0.0
    max_sample_error: float = 0.0
    worst_share: float = 0.0  # largest |error| / allowance seen while agreeing
    departure: Departure | None = None

    @property
    def passed(self) -> bool:
        """Some steps were compared and none left the tolerance (a match over zero steps is no match)."""
        return self.departure is None and self.steps_run > 0


def compare_golden(
    document: dict, images: np.ndarray, labels: np.ndarray, steps: int | None = None
) -> GoldenComparison:
    """Rerun scratch and compare step by step; stop at the first step that departs (after checking it fully)."""
    config: GoldenConfig = document["config"]
    tolerance = tolerance_for(config.dtype)
    checkpoints = {cp["step"]: cp for cp in document["checkpoints"]}
    result = GoldenComparison()
    limit = config.steps if steps is None else min(steps, config.steps)
    for step, trace, net in scratch_steps(config, images, labels):
        if step >= limit:
            break
        result.steps_run = step + 1
        candidates = [("loss", float(trace.loss), document["loss"][step], tolerance)]
        if step in checkpoints:
            # Per-sample gradients of this step's batch (the last may be short) under atol / its size.
            tolerances = tensor_tolerances(net.spec.tensors, np.dtype(config.dtype), len(trace.tensors["probs"]))
            checkpoint, tensors = checkpoints[step], _tensors(trace, net)
            result.checkpoints += 1
            exact = all(digest(tensors[name]) == checkpoint["digests"][name] for name in net.parameters())
            result.bit_exact_checkpoints += exact
            if not exact and result.first_digest_difference is None:
                result.first_digest_difference = step
            for name in document["sample_indices"]:
                indices = document["sample_indices"][name]
                values = _take(tensors[name], indices)
                for index, value, golden in zip(indices, values, checkpoint["samples"][name], strict=True):
                    candidates.append((f"{name}[{index}]", value, golden, tolerances[name]))
        for what, value, golden, tolerance in candidates:
            error = abs(value - golden)
            allowed = float(tolerance.allowed(np.float64(golden)))
            if not error <= allowed:  # NaN fails
                result.departure = Departure(step, what, value, golden, error, allowed)
                return result
            result.worst_share = max(result.worst_share, error / allowed)
            if what == "loss":
                result.max_loss_error = max(result.max_loss_error, error)
            else:
                result.max_sample_error = max(result.max_sample_error, error)
        golden_correct = document["correct"][step]
        if trace.correct != golden_correct:  # argmax moved although the loss agreed: a near-tie in the logits
            result.departure = Departure(step, "correct", float(trace.correct), float(golden_correct), 1.0, 0.0)
            return result
    if result.steps_run < limit:  # the data ran out: never report a match over fewer steps than were asked
        raise UsageError(
            f"the data give only {result.steps_run} of the golden record's {limit} steps; "
            "pass the data it was recorded on (--data-dir) or re-record it"
        )
    return result
