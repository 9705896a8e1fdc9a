"""Checking code written to the tutorial's interface, tensor by tensor, against PyTorch.

The implementation (`Conv3x3`, `MaxPool2`, `Softmax` with `forward` and `backprop`, weights in `filters`,
`weights`, `biases`, as in the seed tutorial) is the spec `conv3x8,pool2,dense10`: `Conv3x3` is `conv1`, `MaxPool2`
`pool1`, `Softmax` `dense1` and the softmax of the loss. It gets the same initial weights as the PyTorch twin of
that spec and is driven exactly as the tutorial's `train()` drives it (see `parity.check.adapter`), in lockstep with
the twin on real MNIST; the lockstep engine compares every tensor it can see, under the spec's names
(`conv1.out`, `pool1.d_in`, ...), at every step and names the first divergence.
Then edge probes, each a short lockstep run from the same seeded weights:

- constant images: every 2x2 pool window is tied, so any tie policy other than PyTorch's first-maximum shows;
- large logits: dense weights shifted the same for every class, so every logit rises by >= 800 while the
  probabilities stay as they were (softmax is shift-invariant): an unshifted `exp` overflows to inf and the
  probabilities become NaN (see `large_logit_weights` for why the weights, not the biases, carry the shift);
- odd image size: 27x27 crops of the digits (conv 25x25, pool 12x12, `Softmax(1152, 10)`): the pool's floor and
  the untouched last row and column.

Exit 0: parity everywhere; 1: a divergence (or the code raised during a probe); 2: unusable input (cannot import,
missing class or method, weights or returned arrays of the wrong shape, or the code raises on the very first step).

Nothing here imports torch at module level (the CLI imports every command module to build its parser).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np

import scratch
from parity.check.adapter import ImplCrash, TutorialSide, tutorial_spec
from parity.check.loader import TutorialImpl
from parity.check.refine import refine
from parity.lockstep.stepper import Lockstep, LockstepRecord
from scratch.data import epoch_orders
from scratch.spec import NetworkSpec

DEFAULT_STEPS = 200  # the tutorial's loop code (~15 ms a step) and the twin: ~5 s with the probes on 2 cores
DEFAULT_LR = 0.005  # the tutorial's train(im, label, lr=.005)
PROBES = ("constant", "large-logits", "odd-size")
LARGE_LOGIT_SHIFT = 800.0  # exp(800) overflows float64 (max ~709.78)
PROBE_IMAGES = 20  # the probes draw from the first 20 digits of the training order
# For the message when an implementation's tensors do not fit the tutorial's layout: the user's per-sample shapes
# (the engine's tensors carry a leading batch axis of 1 that the adapter adds).
TUTORIAL_SHAPES = {
    "conv1.out": "(h - 2, w - 2, num_filters), HWC",
    "pool1.out": "(h // 2, w // 2, num_filters), HWC",
    "dense1.out": "(nodes,)",
    "probs": "(nodes,)",
    "dense1.d_in": "the pool output's shape (h // 2, w // 2, num_filters)",
    "pool1.d_in": "the conv output's shape (h - 2, w - 2, num_filters)",
    "conv1.d_in": "the image's shape (h, w)",
    "conv1.d_filters": "(num_filters, 3, 3)",
    "dense1.d_weights": "(input_len, nodes)",
    "dense1.d_biases": "(nodes,)",
    "dense1.d_out": "(nodes,)",
}


@dataclass
class RunResult:
    """One lockstep run of the implementation: the main run or a probe."""

    name: str
    title: str
    steps_planned: int
    lr: float
    image_shape: tuple[int, int]
    record: LockstepRecord
    provenance: dict[str, str] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # tensor -> the user's `Class.member` it comes out of
    crash: ImplCrash | None = None
    crash_step: int | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """Every step within tolerance and no exception from the implementation."""
        return self.crash is None and self.record.passed

    @property
    def layer(self) -> str | None:
        """The spec layer blamed for the first failure (`conv1`, `pool1`, `dense1`, `loss`; None when it passed)."""
        if self.crash is not None:
            return self.crash.layer
        return self.record.first_divergence.layer if self.record.first_divergence else None

    @property
    def tensor(self) -> str | None:
        """The first tensor out of tolerance (None for a pass or a crash)."""
        return self.record.first_divergence.tensor if self.record.first_divergence else None

    @property
    def failure_step(self) -> int | None:
        """The step of the first failure."""
        if self.crash is not None and self.record.first_divergence is None:
            return self.crash_step
        return self.record.first_divergence.step if self.record.first_divergence else None

    @property
    def verdict(self) -> str:
        """PARITY, DIVERGED or CRASHED."""
        if self.record.first_divergence is not None:
            return "DIVERGED"
        return "CRASHED" if self.crash is not None else "PARITY"

    @property
    def failing_steps(self) -> int:
        """How many steps had a tensor out of tolerance."""
        return sum(not step.passed for step in self.record.steps)

    def cause(self) -> str:
        """A short cause for tables: `tie-policy difference`, `softmax overflow`, `implementation mismatch`."""
        if self.record.first_divergence is None:
            return f"raised at step {self.crash_step}: {self.crash}" if self.crash else ""
        div = self.record.first_divergence
        if div.comparison.problem and div.diagnosis.kind == "unexplained":
            return div.comparison.problem.split(";")[0]
        return div.diagnosis.label

    def explanation(self) -> str:
        """The first divergence in full (the engine's diagnosis, refined with the step's tensors), or the crash."""
        if self.record.first_divergence is None:
            if self.crash is None:
                return "no divergence"
            held = "; parity held before that step" if self.crash_step else ""
            return f"step {self.crash_step}: {self.crash} (the implementation raised{held})"
        return self.record.first_divergence.message()


@dataclass
class CheckResult:
    """A main lockstep run and the edge probes, for one implementation."""

    impl: TutorialImpl
    main: RunResult
    probes: list[RunResult]
    data_source: str
    seed: int
    mode: str

    @property
    def runs(self) -> list[RunResult]:
        """The main run, then the probes."""
        return [self.main, *self.probes]

    @property
    def passed(self) -> bool:
        """Parity in the main run and every probe."""
        return all(run.passed for run in self.runs)

    @property
    def first_failure(self) -> RunResult | None:
        """The main run if it failed, else the first failing probe."""
        return next((run for run in self.runs if not run.passed), None)


def check_impl(
    impl: TutorialImpl,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    lr: float = DEFAULT_LR,
    mode: str = "free",
    probes: tuple[str, ...] = PROBES,
    stop_at_first: bool = False,
    data_source: str = "",
    tie_policy: str = "first",
) -> CheckResult:
    """Run the main lockstep run on the first `steps` images of seeded epoch orders, then the probes.

    With `stop_at_first`, each run stops at its first divergence and the probes run only after a clean main run
    (what the self-test needs); otherwise every run goes to the end. `tie_policy` "all" judges the max-pool against
    the tutorial's rule (every tied maximum gets the gradient) instead of PyTorch's. Raises `ImplError` when the
    classes cannot be constructed with the tutorial's arguments or hold wrongly shaped weights.
    """
    images, labels = _training_order(train_images, train_labels, max(steps, PROBE_IMAGES), seed)
    spec = tutorial_spec(train_images.shape[1:])
    initial = _initial_parameters(spec, seed)
    title = f"{steps} real MNIST steps"
    how = _How(impl, lr, mode, seed, stop_at_first, tie_policy)
    main = _lockstep(how, spec, "main", title, images[:steps], labels[:steps], initial)
    result = CheckResult(impl, main, [], data_source, seed, mode)
    if stop_at_first and not main.passed:
        return result
    for probe in probes:
        run = _probe(probe, how, spec, images, labels)
        result.probes.append(run)
        if stop_at_first and not run.passed:
            break
    return result


def _training_order(images: np.ndarray, labels: np.ndarray, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `steps` indices of the seeded epoch orders (`scratch.data.epoch_orders`, as every run trains)."""
    epochs = -(-steps // len(labels))  # ceil
    order = np.fromiter(itertools.chain.from_iterable(epoch_orders(len(labels), epochs, seed)), dtype=np.intp)
    return images[order[:steps]], labels[order[:steps]]


def _initial_parameters(spec: NetworkSpec, seed: int) -> dict[str, np.ndarray]:
    """The scratch network's seeded initial weights for `spec`, by spec name (what both sides start from)."""
    return {name: value.copy() for name, value in scratch.build_network(spec, seed, np.float64).parameters().items()}


@dataclass(frozen=True)
class _How:
    """How every run of one check is driven."""

    impl: TutorialImpl
    lr: float
    mode: str
    seed: int
    stop_at_first: bool
    tie_policy: str


def _probe(name: str, how: _How, spec: NetworkSpec, images: np.ndarray, labels: np.ndarray) -> RunResult:
    seed = how.seed
    initial = _initial_parameters(spec, seed)
    if name == "constant":
        constant = np.stack([np.full(spec.image_shape, value, dtype=np.uint8) for value in (0, 128, 255)])
        title = "constant images (0, 128, 255): every pool window tied"
        return _lockstep(how, spec, name, title, constant, np.array([0, 1, 2]), initial)
    if name == "large-logits":
        chosen, weights = large_logit_weights(initial, images, labels, seed)
        initial["dense1.weights"] = weights
        title = f"large logits: every logit raised by >= {LARGE_LOGIT_SHIFT:g} (probabilities unchanged; exp overflows)"
        return _lockstep(how, spec, name, title, images[chosen], labels[chosen], initial)
    if name == "odd-size":
        shape = spec.image_shape
        odd = tuple(size - 1 if size % 2 == 0 else size - 2 for size in shape)  # 28 -> 27: conv 25, pool floors to 12
        height, width = odd
        slack = np.array(shape) - np.array(odd) + 1  # how far each crop may be offset, per dimension
        offsets = np.random.default_rng(seed).integers(0, slack, size=(PROBE_IMAGES, 2))
        crops = np.stack(
            [image[r : r + height, c : c + width] for image, (r, c) in zip(images[:PROBE_IMAGES], offsets, strict=True)]
        )  # a random crop of each digit
        odd_spec = tutorial_spec(odd, spec.layer("conv1").units, spec.num_classes)
        initial = _initial_parameters(odd_spec, seed)
        pooled = initial["dense1.weights"].shape[0]
        title = (
            f"odd image size: {height}x{width} crops, pool {height - 2} -> {(height - 2) // 2}, Softmax({pooled}, 10)"
        )
        return _lockstep(how, odd_spec, name, title, crops, labels[:PROBE_IMAGES], initial)
    raise ValueError(f"unknown probe {name!r}: expected one of {PROBES}")


def large_logit_weights(initial, images, labels, seed, count: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Dense weights whose logits all exceed the usual ones by >= LARGE_LOGIT_SHIFT on `count` of `images`.

    Adding delta_f to every weight that reads channel f, the same for all classes, adds sum_f delta_f * S_f to every
    logit, where S_f sums the pool output of channel f: softmax is shift-invariant, so the probabilities, the loss and
    every gradient stay ordinary, while exp(logit) overflows. delta_f = k * sign(S_f), k chosen so that the smallest
    shift over the chosen images is LARGE_LOGIT_SHIFT; |w| ~ k stays small (~4), so gradients recovered from the
    update stay exact to ~eps * k / lr ~ 1e-13 (a bias of 800 would give ~2e-11 at lr 0.005, over the atol).
    """
    spec = tutorial_spec(images.shape[1:], initial["conv1.filters"].shape[0], initial["dense1.biases"].shape[0])
    net = scratch.build_network(spec, seed, np.float64)
    net.load_parameters(initial)
    # One forward + backward of the first images as a batch (no update): only their pool outputs are read.
    pooled = net.forward_backward(images[:PROBE_IMAGES], labels[:PROBE_IMAGES]).tensors["pool1.out"]  # (n, H, W, C)
    sums = pooled.sum(axis=(1, 2))  # (n, channels): S_f per image
    direction = np.where(sums.sum(axis=0) >= 0, 1.0, -1.0)
    shift = sums @ direction  # each image's logit shift per unit k
    chosen = np.flatnonzero(shift > 0)[:count]
    if len(chosen) == 0:
        raise ValueError("no image gives a positive logit shift for the large-logit probe")
    k = LARGE_LOGIT_SHIFT / shift[chosen].min()
    height, width, channels = pooled.shape[1:]
    weights = initial["dense1.weights"].reshape(height, width, channels, -1) + (k * direction)[:, np.newaxis]
    return chosen, weights.reshape(initial["dense1.weights"].shape)


def _lockstep(how: _How, spec, name, title, images, labels, initial) -> RunResult:
    """Step the implementation and the twin together one image at a time (so a crash or a stop is exact)."""
    import reference  # torch: only when a check actually runs

    lr = how.lr
    side = _Recording(TutorialSide(how.impl, initial, spec.image_shape, lr))
    net = scratch.build_network(spec, how.seed, np.float64)
    net.load_parameters(initial)
    twin = _Recording(reference.ReferenceRunner(reference.to_torch(net, how.tie_policy), lr=lr))
    lockstep = Lockstep(side, twin, spec, np.float64, lr, stride=1, mode=how.mode)
    record = lockstep.record
    run = RunResult(name, title, len(labels), lr, tuple(spec.image_shape), record)
    started = time.perf_counter()
    for index in range(len(labels)):
        try:
            lockstep.step(images[index : index + 1], labels[index : index + 1])
        except ImplCrash as crash:
            run.crash, run.crash_step = crash, index
            break
        if record.first_divergence is not None and record.first_divergence.step == index:
            record.first_divergence = refine(record.first_divergence, side.tensors(), twin.tensors())
            if how.stop_at_first:
                break
    lockstep.finish()
    run.provenance = side.side.provenance()
    run.origins = {tensor: side.side.origin(tensor) for tensor in spec.tensor_names}
    run.seconds = time.perf_counter() - started
    return run


class _Recording:
    """A lockstep Side that keeps its last step's tensors, to explain a divergence with evidence."""

    def __init__(self, side) -> None:
        self.side, self.last = side, {}

    def forward_backward(self, images, labels, names=None):
        self.last = self.side.forward_backward(images, labels, names)
        return self.last

    def update(self, lr):
        self.side.update(lr)

    def run_layer(self, feed):
        return self.side.run_layer(feed)

    def parameters(self):
        return self.side.parameters()

    def load_parameters(self, params):
        self.side.load_parameters(params)

    def tensors(self) -> dict[str, np.ndarray]:
        """The last step's tensors and the parameters after its update."""
        return {**self.last, **self.side.parameters()}
