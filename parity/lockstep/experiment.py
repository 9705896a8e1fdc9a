"""The lockstep experiment on any spec: epochs of seeded shuffles in batches, the tutorial's progress lines, the
test pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

import scratch
from parity.lockstep.feed import LayerFeed
from parity.lockstep.stepper import Lockstep, LockstepRecord, StepRecord
from scratch.data import Dataset
from scratch.spec import DEFAULT_SPEC, NetworkSpec, parse_spec
from scratch.splits import batches, epoch_orders, steps_per_epoch

if TYPE_CHECKING:  # imported where a run builds its reference: a report's own process, which only reads the
    import reference  # configs and results, then never imports torch (its workers have it loaded already)


@dataclass(frozen=True)
class ExperimentConfig:
    """One lockstep run of the experiment (the tutorial's by default)."""

    arch: str = DEFAULT_SPEC
    batch_size: int = 1
    dtype: str = "float64"
    tie_policy: str = "first"
    softmax: str = "stable"
    impl: str = "vectorized"
    epochs: int = 3
    lr: float = 0.005
    seed: int = 0
    stride: int = 1
    mode: str = "free"

    @property
    def name(self) -> str:
        """A short label: `float64 first/stable`, `float64 first/stable loops`, `float64 examples/x probe:constant`."""
        if self.impl.startswith("check:"):  # a checked implementation: its own semantics, named by its path
            base = f"{self.dtype} {self.impl.removeprefix('check:')}"
        else:
            base = f"{self.dtype} {self.tie_policy}/{self.softmax}" + (
                "" if self.impl == "vectorized" else f" {self.impl}"
            )
        shape = ("" if self.arch == DEFAULT_SPEC else f" {self.arch}") + (
            "" if self.batch_size == 1 else f" batch {self.batch_size}"
        )
        return base + shape + ("" if self.mode == "free" else f" {self.mode}")

    @property
    def expects_parity(self) -> bool:
        """Only PyTorch's semantics can match PyTorch; the tutorial-faithful run is a demonstration."""
        return self.tie_policy == "first" and self.softmax == "stable"

    def as_dict(self) -> dict[str, object]:
        """The config as plain JSON-able values."""
        return asdict(self)


class ScratchSide:
    """Adapts `scratch.Network` to the lockstep `Side` interface."""

    def __init__(self, net: scratch.Network) -> None:
        self.net = net
        self._image_gradient = net.spec.name_of(net.spec.layers[0].name, "d_in")

    def forward_backward(self, images: np.ndarray, labels: np.ndarray, names=None) -> dict[str, np.ndarray]:
        """The named tensors of one step: every one when `names` is None or asks for the image's own gradient,
        else all but that one (which only a comparison needs, as a bare training step does not compute it)."""
        full = names is None or self._image_gradient in names
        return self.net.forward_backward(images, labels, full=full).tensors

    def update(self, lr: float) -> None:
        """SGD on every layer."""
        self.net.update(lr)

    def parameters(self) -> dict[str, np.ndarray]:
        """The live parameters."""
        return self.net.parameters()

    def load_parameters(self, params: dict[str, np.ndarray]) -> None:
        """Copy parameters in."""
        self.net.load_parameters(params)

    def evaluate(self, images: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
        """Mean loss and the number right, without backward."""
        return self.net.evaluate(images, labels)

    def run_layer(self, feed: LayerFeed) -> dict[str, np.ndarray]:
        """One layer alone on the reference's input, output gradient and weights (see `parity.lockstep.local`): its
        tensors by spec name, the update judged from the reference's gradients; the network's weights are kept."""
        spec, name = self.net.spec, feed.layer.name
        layer = self.net.layer(name)
        own = {param: getattr(layer, param).copy() for param in feed.params}
        try:
            for param, value in feed.params.items():
                getattr(layer, param)[...] = value
            tensors = {spec.name_of(name, "out"): layer.forward(feed.inputs)}
            if feed.logits is not None:  # the last layer: the loss, judged on the reference's logits
                probs, loss = self.net.loss.forward(feed.logits, feed.labels)
                tensors |= {"probs": probs, "loss": loss, spec.name_of(name, "d_out"): self.net.loss.backward()}
            tensors[spec.name_of(name, "d_in")] = layer.backward(feed.d_out)
            for param in feed.params:
                tensors[spec.name_of(name, "d_param", param)] = layer.grads[param]
            layer.grads = dict(feed.gradients)  # the update rule alone, from the reference's gradients
            layer.update(feed.lr)
            for param in feed.params:
                tensors[spec.name_of(name, "param", param)] = getattr(layer, param).copy()
        finally:
            for param, value in own.items():
                getattr(layer, param)[...] = value
        return tensors


@dataclass
class ExperimentResult:
    """A finished lockstep experiment: the record, the tutorial's progress lines, and the test results."""

    config: ExperimentConfig
    record: LockstepRecord
    progress: list[dict[str, object]] = field(default_factory=list)
    test: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every tensor agreed at every step."""
        return self.record.passed


def build_sides(
    config: ExperimentConfig, image_shape: tuple[int, int]
) -> tuple[NetworkSpec, ScratchSide, reference.ReferenceRunner]:
    """The spec, a scratch network from its seeded init, and the twin holding the same weights."""
    import reference

    spec = parse_spec(config.arch, tuple(image_shape))
    net = scratch.build_network(
        spec,
        config.seed,
        np.dtype(config.dtype),
        tie_policy=config.tie_policy,
        softmax=config.softmax,
        impl=config.impl,
    )
    return spec, ScratchSide(net), reference.ReferenceRunner(reference.to_torch(net), lr=config.lr)


def run_experiment(
    config: ExperimentConfig,
    train: Dataset,
    test: Dataset,
    on_step: Callable[[StepRecord], None] | None = None,
) -> ExperimentResult:
    """Train both sides in lockstep for `config.epochs`, then test both on `test`."""
    spec, scratch_side, reference_side = build_sides(config, train.images.shape[1:])
    lockstep = Lockstep(scratch_side, reference_side, spec, config.dtype, config.lr, config.stride, config.mode)
    result = ExperimentResult(config, lockstep.record)
    # A run whose weights outgrow the dtype overflows on both sides: the comparison reports it (a non-finite
    # tensor, diagnosed), so NumPy's warnings would only repeat it, raw, on stderr.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for order in epoch_orders(len(train), config.epochs, config.seed):
            for index in batches(order, config.batch_size):
                step = lockstep.step(train.images[index], train.labels[index])
                if on_step is not None:
                    on_step(step)
        steps = lockstep.finish().steps  # final: a strided run may have replayed its last steps
        tested = {"scratch": evaluate(scratch_side, test), "reference": evaluate(reference_side, test)}
    per_epoch = steps_per_epoch(len(train), config.batch_size)
    for epoch in range(config.epochs):
        epoch_steps = steps[epoch * per_epoch : (epoch + 1) * per_epoch]
        result.progress += progress_lines(epoch_steps, epoch)
    result.test = tested
    return result


def progress_lines(steps: list[StepRecord], epoch: int, every: int = 100) -> list[dict[str, object]]:
    """The tutorial's `[Step 100] Past 100 steps: Average Loss ... | Accuracy: ...%`, for both sides."""
    lines = []
    for end in range(every, len(steps) + 1, every):
        window = steps[end - every : end]
        samples = sum(s.samples for s in window)
        lines.append(
            {
                "epoch": epoch + 1,
                "step": end,
                "scratch_loss": float(np.mean([s.scratch_loss for s in window])),
                "scratch_accuracy": 100 * sum(s.scratch_correct for s in window) / samples,
                "reference_loss": float(np.mean([s.reference_loss for s in window])),
                "reference_accuracy": 100 * sum(s.reference_correct for s in window) / samples,
            }
        )
    return lines


def evaluate(side: ScratchSide | reference.ReferenceRunner, test: Dataset) -> dict[str, float]:
    """Mean loss and accuracy over `test`, forward only."""
    results = [side.evaluate(image, int(label)) for image, label in zip(test.images, test.labels, strict=True)]
    return {"loss": float(np.mean([r[0] for r in results])), "accuracy": float(np.mean([r[1] > 0 for r in results]))}
