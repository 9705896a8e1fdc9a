"""Checking a user's from-scratch CNN, tensor by tensor, against PyTorch.

The implementation's layer objects (the tutorial's `Conv3x3`, `MaxPool2`, `Softmax`, or any sequence given by
`--layers`) are read as a network spec (`parity.check.infer`): `conv5x16` from a conv whose filters are
(16, 5, 5, 8), `pool2` from what a pool does to a probe's shape, `dense10` from the classifier's weights. The code
gets the same initial weights as the PyTorch twin of that spec and is driven exactly as the tutorial's `train()`
drives its layers (see `parity.check.adapter`), in lockstep with the twin on real MNIST; the lockstep engine
compares every tensor it can see, under the spec's names (`conv1.out`, `pool2.d_in`, ...), at every step, names
the first divergence, and judges every layer on its own. Then edge probes, each a short lockstep run from the same
seeded weights:

- constant images: every pool window is tied, so any tie policy other than PyTorch's first-maximum shows;
- large logits: classifier weights shifted the same for every class, so every logit rises by >= 800 while the
  probabilities stay as they were (softmax is shift-invariant): an unshifted `exp` overflows to inf and the
  probabilities become NaN (see `large_logit_weights` for why the weights, not the biases, carry the shift);
- odd image size: crops one or two pixels smaller (27x27 for MNIST), rebuilt for that size: a pool's floor and
  the untouched last row and column. Skipped, with the reason, when the network cannot be built at that size;
- exact zeros into every ReLU: the first filter or unit feeding each one zeroed, where PyTorch passes no gradient
  (real digits never give a ReLU an input of exactly 0). Only for networks with a ReLU after a conv or dense.

Exit 0: parity everywhere; 1: a divergence, or the code raised or hung in a run; 2: unusable input (cannot import,
names or shapes that do not fit, or the code raises before the first step).

Nothing here imports torch at module level (the CLI imports every command module to build its parser).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np

import scratch
from parity.check.adapter import ImplSide
from parity.check.infer import Architecture, infer_architecture
from parity.check.loader import Impl
from parity.check.names import LayerMisbehaves
from parity.check.refine import refine
from parity.check.results import CheckResult, RunResult
from parity.check.usercode import DEFAULT_TIMEOUT, ImplCrash
from parity.lockstep.records import LockstepRecord
from parity.lockstep.stepper import Lockstep
from scratch.spec import LayerSpec, NetworkSpec, parse_spec
from scratch.splits import epoch_orders

DEFAULT_STEPS = 200  # the tutorial's loop code (~15 ms a step) and the twin: ~5 s with the probes on 2 cores
DEFAULT_LR = 0.005  # the tutorial's train(im, label, lr=.005)
PROBES = ("constant", "large-logits", "odd-size", "relu-zero")
LARGE_LOGIT_SHIFT = 800.0  # exp(800) overflows float64 (max ~709.78)
# The largest classifier weight the large-logit probe lets the shift need at the run's lr: gradients recovered from
# an update are exact to eps/2 * |w| / lr (see the adapter), 1.8e-13 at |w| = 8 and lr 0.005, 5x inside the float64
# atol; a network that needs larger weights for the same shift runs the probe at a proportionally larger lr (or at
# the run's own, when that is larger still: an lr larger than needed only magnifies the updates' rounding).
LARGE_LOGIT_WEIGHT = 8.0
PROBE_IMAGES = 20  # the probes draw from the first 20 digits of the training order
# For the message when an implementation's tensors do not fit the tutorial's layout: the user's per-sample shapes
# by tensor role (the engine's tensors carry a leading batch axis of 1 that the adapter adds).
SHAPES_BY_ROLE = {
    "out": "the layer's output, HWC (height, width, channels) or (nodes,)",
    "probs": "(nodes,)",
    "d_in": "the shape of the layer's input",
    "d_param": "the parameter's shape",
    "d_out": "(nodes,)",
}


def check_impl(
    impl: Impl,
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
    timeout: float | None = DEFAULT_TIMEOUT,
    arch: Architecture | None = None,
) -> CheckResult:
    """Read the architecture (unless given), run the main lockstep run on the first `steps` images of seeded epoch
    orders, then the probes.

    With `stop_at_first`, each run stops at its first divergence and the probes run only after a clean main run
    (what the self-test needs); otherwise every run goes to the end. `tie_policy` "all" judges the max-pools against
    the tutorial's rule (every tied maximum gets the gradient) instead of PyTorch's. `timeout` limits every call
    into the user's code. Raises `ImplError` (NamesError) when the layers cannot be read as a network, `ImplCrash`
    when the code raises or hangs while its architecture is read.
    """
    if arch is None:
        arch = infer_architecture(impl, tuple(train_images.shape[1:]), timeout=timeout)
    images, labels = _training_order(train_images, train_labels, max(steps, PROBE_IMAGES), seed)
    how = _How(impl, lr, mode, seed, stop_at_first, tie_policy)
    initial = _initial_parameters(arch.spec, seed)
    title = f"{steps} real MNIST steps"
    main = _lockstep(how, arch, "main", title, images[:steps], labels[:steps], initial, lr)
    result = CheckResult(impl, arch, main, [], data_source, seed, mode)
    if stop_at_first and not main.passed:
        return result
    for probe in probes:
        if probe == "relu-zero" and not relu_feeding_layers(arch.spec):
            continue  # no ReLU after a conv or dense layer: nothing to probe, so no probe (not a skipped one)
        run = _probe(probe, how, arch, images, labels)
        result.probes.append(run)
        if stop_at_first and not run.passed:
            break
    return result


def _training_order(images: np.ndarray, labels: np.ndarray, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `steps` indices of the seeded epoch orders (`scratch.splits.epoch_orders`, as every run trains)."""
    epochs = -(-steps // len(labels))  # ceil
    order = np.fromiter(itertools.chain.from_iterable(epoch_orders(len(labels), epochs, seed)), dtype=np.intp)
    return images[order[:steps]], labels[order[:steps]]


def _initial_parameters(spec: NetworkSpec, seed: int) -> dict[str, np.ndarray]:
    """The scratch network's seeded initial weights for `spec`, by spec name (what both sides start from)."""
    return {name: value.copy() for name, value in scratch.build_network(spec, seed, np.float64).parameters().items()}


@dataclass(frozen=True)
class _How:
    """How every run of one check is driven."""

    impl: Impl
    lr: float
    mode: str
    seed: int
    stop_at_first: bool
    tie_policy: str


def odd_image_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """One or two pixels smaller, to the next odd size: 28 -> 27 (a 3x3 conv gives 25, a 2x2 pool floors it to 12)."""
    return tuple(size - 1 if size % 2 == 0 else size - 2 for size in shape)


def _probe(name: str, how: _How, arch: Architecture, images: np.ndarray, labels: np.ndarray) -> RunResult:
    spec, seed = arch.spec, how.seed
    initial = _initial_parameters(spec, seed)
    if name == "constant":
        constant = np.stack([np.full(spec.image_shape, value, dtype=np.uint8) for value in (0, 128, 255)])
        title = "constant images (0, 128, 255): every pool window tied"
        return _lockstep(how, arch, name, title, constant, np.array([0, 1, 2]), initial, how.lr)
    if name == "large-logits":
        chosen, weights = large_logit_weights(spec, initial, images, labels, seed)
        initial[f"{spec.layers[-1].name}.weights"] = weights
        largest = float(np.abs(weights).max())
        lr = max(how.lr, DEFAULT_LR * largest / LARGE_LOGIT_WEIGHT)
        title = f"large logits: every logit raised by >= {LARGE_LOGIT_SHIFT:g} (probabilities unchanged; exp overflows)"
        # Weights this large amplify each update's rounding into the next step's activations (at --lr 0.3 the
        # two-conv example's conv1.out drifted past its atol by step 1, on correct code): each step starts from the
        # twin's weights, so what is judged is the overflow, not drift.
        if lr != how.lr:
            title += (
                f"; lr {lr:.3g}, teacher-forced, so gradients recovered from weights up to {largest:.3g} stay exact"
            )
        else:
            title += "; teacher-forced, so the weights' drift is not judged"
        return _lockstep(how, arch, name, title, images[chosen], labels[chosen], initial, lr, "teacher")
    if name == "odd-size":
        return _odd_size_probe(how, arch, images, labels)
    if name == "relu-zero":
        return _relu_zero_probe(how, arch, images, labels)
    raise ValueError(f"unknown probe {name!r}: expected one of {PROBES}")


def _odd_size_probe(how: _How, arch: Architecture, images: np.ndarray, labels: np.ndarray) -> RunResult:
    from parity.check.infer import ProbeSkipped, at_image_size

    shape = arch.spec.image_shape
    odd = odd_image_shape(shape)
    height, width = odd
    title = f"odd image size: {height}x{width} crops"
    try:
        odd_spec = parse_spec(arch.spec.text, odd, arch.spec.num_classes)
        odd_arch = at_image_size(arch, odd)
    except ProbeSkipped as skip:
        return _not_run(how, arch.spec, "odd-size", title, odd, skipped=str(skip))
    except LayerMisbehaves as failure:  # a layer acts otherwise at this size: the very thing the probe is for
        crash = ImplCrash(failure.cls, failure.method, failure.detail, failure.layer)
        return _not_run(how, arch.spec, "odd-size", title, odd, crash=crash)
    except ValueError as error:  # the network does not fit the odd size
        return _not_run(how, arch.spec, "odd-size", title, odd, skipped=str(error))
    except ImplCrash as crash:  # raised (or hung) while the layers were read at the odd size: before its step 0
        return _not_run(how, odd_spec, "odd-size", title, odd, crash=crash)
    sizes = " -> ".join(
        "x".join(map(str, layer.out_shape[:2])) for layer in odd_spec.layers if layer.kind in ("conv", "pool")
    )
    title = f"odd image size: {height}x{width} crops ({sizes}), {odd_arch.calls[-1].text()}"
    slack = np.array(shape) - np.array(odd) + 1  # how far each crop may be offset, per dimension
    offsets = np.random.default_rng(how.seed).integers(0, slack, size=(PROBE_IMAGES, 2))
    crops = np.stack(
        [image[r : r + height, c : c + width] for image, (r, c) in zip(images[:PROBE_IMAGES], offsets, strict=True)]
    )  # a random crop of each digit
    initial = _initial_parameters(odd_spec, how.seed)
    return _lockstep(how, odd_arch, "odd-size", title, crops, labels[:PROBE_IMAGES], initial, how.lr)


def _relu_zero_probe(how: _How, arch: Architecture, images: np.ndarray, labels: np.ndarray) -> RunResult:
    """Every ReLU fed exact zeros: the first filter or unit of the layer feeding it zeroed, weights and bias. Real
    digits never give a ReLU an input of exactly 0, where PyTorch passes no gradient (a `>= 0` mask passes it)."""
    spec = arch.spec
    initial = relu_zeroed(spec, _initial_parameters(spec, how.seed))
    feeding = ", ".join(layer.name for layer in relu_feeding_layers(spec))
    title = f"exact zeros into every ReLU: the first filter or unit feeding each one zeroed ({feeding})"
    return _lockstep(how, arch, "relu-zero", title, images[:PROBE_IMAGES], labels[:PROBE_IMAGES], initial, how.lr)


def relu_zeroed(spec: NetworkSpec, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`params` (by spec name, scratch layouts) with the first filter or unit of every layer feeding a ReLU zeroed,
    weights and bias, in place: that channel is exactly 0 at every step, and so is its gradient."""
    for layer in relu_feeding_layers(spec):
        for param, _ in layer.params:
            # Filters `(F, K, K[, C])` and biases lead with the unit; dense weights `(in, out)` end with it.
            params[spec.name_of(layer.name, "param", param)][
                (slice(None), 0) if layer.kind == "dense" and param == "weights" else 0
            ] = 0
    return params


def relu_feeding_layers(spec: NetworkSpec) -> list[LayerSpec]:
    """The conv and dense layers whose outputs reach a ReLU through pools and ReLUs only (which keep a channel's
    zeros zero), in spec order."""
    feeding = []
    for position, layer in enumerate(spec.layers):
        if layer.kind != "relu":
            continue
        before = position - 1
        while before >= 0 and spec.layers[before].kind in ("pool", "relu"):
            before -= 1
        if before >= 0 and spec.layers[before] not in feeding:
            feeding.append(spec.layers[before])
    return feeding


def _not_run(how, spec, name, title, image_shape, skipped=None, crash=None) -> RunResult:
    """A probe that could not take a step: skipped (with the reason), or the code raised while it was set up."""
    record = LockstepRecord(dtype="float64", mode=how.mode, stride=1, lr=how.lr, spec=spec)
    return RunResult(name, title, 0, how.lr, tuple(image_shape), record, crash=crash, crash_step=0, skipped=skipped)


def large_logit_weights(
    spec: NetworkSpec, initial: dict[str, np.ndarray], images: np.ndarray, labels: np.ndarray, seed: int, count: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Classifier weights whose logits all exceed the usual ones by >= LARGE_LOGIT_SHIFT on `count` of `images`.

    Adding delta_f to every weight that reads channel f (its last axis: a flat input's every element is a channel
    of its own), the same for all classes, adds sum_f delta_f * S_f to every logit, where S_f sums the classifier's
    input of channel f: softmax is shift-invariant, so the probabilities, the loss and every gradient stay ordinary,
    while exp(logit) overflows. delta_f = k * sign(S_f), k chosen so that the smallest shift over the chosen images
    is LARGE_LOGIT_SHIFT; for the tutorial's network |w| ~ k stays small (~4), so gradients recovered from the update
    stay exact to ~eps * k / lr ~ 1e-13 (a bias of 800 would give ~2e-11 at lr 0.005, over the atol).
    """
    net = scratch.build_network(spec, seed, np.float64)
    net.load_parameters(initial)
    last = spec.layers[-1]
    # One forward + backward of the first images as a batch (no update): only the classifier's inputs are read.
    batch = images[:PROBE_IMAGES], labels[:PROBE_IMAGES]
    if len(spec.layers) > 1:
        inputs = net.forward_backward(*batch).tensors[spec.name_of(spec.layers[-2].name, "out")]
    else:
        inputs = net.normalize(batch[0])
    channels = last.in_shape[-1]
    sums = inputs.reshape(len(inputs), -1, channels).sum(axis=1)  # (n, channels): S_f per image
    direction = np.where(sums.sum(axis=0) >= 0, 1.0, -1.0)
    shift = sums @ direction  # each image's logit shift per unit k
    chosen = np.flatnonzero(shift > 0)[:count]
    if len(chosen) == 0:
        raise ValueError("no image gives a positive logit shift for the large-logit probe")
    k = LARGE_LOGIT_SHIFT / shift[chosen].min()
    weights = initial[f"{last.name}.weights"]
    shifted = weights.reshape(-1, channels, weights.shape[1]) + (k * direction)[:, np.newaxis]
    return chosen, shifted.reshape(weights.shape)


def _lockstep(
    how: _How, arch: Architecture, name, title, images, labels, initial, lr: float, mode: str | None = None
) -> RunResult:
    """Step the implementation and the twin together one image at a time (so a crash or a stop is exact)."""
    import reference  # torch: only when a check actually runs

    spec = arch.spec
    side = _Recording(ImplSide(arch, initial, lr))
    net = scratch.build_network(spec, how.seed, np.float64)
    net.load_parameters(initial)
    twin = _Recording(reference.ReferenceRunner(reference.to_torch(net, how.tie_policy), lr=lr))
    lockstep = Lockstep(side, twin, spec, np.float64, lr, stride=1, mode=mode or how.mode, tie_policy=how.tie_policy)
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
            recovered = side.side.recovered
            record.first_divergence = refine(record.first_divergence, side.tensors(), twin.tensors(), recovered, spec)
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
