"""Local verdicts: every layer of the side under test judged on its own, fed from the reference.

At a step compared in full, each layer is run on the reference's input to it (forward) and the reference's gradient
at its output (backward), from the reference's weights before the step, and its tensors are compared with the
reference's. A layer that is right given the reference's inputs passes, whatever the layers before it got wrong, so
one difference (a tutorial-style tie rule) never hides another bug (a wrong filter gradient): each is reported at
its own layer. The side's own weights are left as they were, so training goes on unchanged.

Running a layer alone is needed only where the lockstep run cannot vouch for it. At a step where every tensor of
the network was compared and agreed, a conv or dense layer was given inputs, weights and an output gradient within
tolerance of the reference's and gave back every one of its tensors within tolerance; these layers are smooth in
what they are fed (sums of products), so on the reference's exact inputs its own error is at most about the error
it inherited, and a run alone would only repeat the agreement. Such a step counts as checked for them
(`implied_steps`) without running them. A pool or a ReLU routes by comparisons (a window's maximum, the sign at 0):
a window tied in the reference's input but not quite in the side's, or an input at exactly 0, is routed by a
different rule than the one the lockstep run exercised, so these always run alone, and they are cheap to run.
Every layer runs alone at every step where some tensor disagrees, is explained or is missing, and, as a live check
of the reasoning, at the first step compared in full and every `ALONE_EVERY`-th after it.

A side takes part when it has `run_layer(feed) -> {name: array}` (see `parity.lockstep.feed.LayerFeed`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

import scratch
from parity.diagnosis import patterns
from parity.diagnosis.diagnose import Context, diagnose_layer
from parity.diagnosis.record import Diagnosis
from parity.engine.batch import Workspace, compare_many
from parity.engine.compare import TensorComparison
from parity.engine.tolerances import tensor_tolerances
from parity.lockstep.feed import LayerFeed
from scratch.spec import NetworkSpec

# Steps compared in full between two runs alone of every layer while the lockstep run agrees everywhere: often
# enough to check on every run that agreeing in lockstep means agreeing alone, rarely enough to cost ~1% of a step.
ALONE_EVERY = 100
# Layers whose output routes by comparisons: agreeing on inputs near the reference's says nothing about the exact
# ones (see the module's doc), so they run alone at every step compared in full.
ROUTING_KINDS = frozenset({"pool", "relu"})


class LayerRunner(Protocol):
    """A side that can run one of its layers alone, on what the reference feeds it."""

    def run_layer(self, feed: LayerFeed) -> dict[str, np.ndarray]: ...


@dataclass
class LayerVerdict:
    """One layer's local verdict over a run, and whether its tensors diverged in the lockstep comparison."""

    name: str
    kind: str  # conv, relu, pool or dense
    checked_steps: int = 0  # steps at which the layer was judged on its own: run alone, or implied
    implied_steps: int = 0  # of those, steps at which every tensor agreed in the lockstep run (see the module's doc)
    failed_steps: int = 0
    step: int | None = None  # the first local failure
    tensor: str | None = None
    diagnosis: Diagnosis | None = None
    worst_tolerance_used: float = 0.0  # locally, over the steps it ran alone
    lockstep_failed_steps: int = 0  # steps at which one of its tensors was out of tolerance in the lockstep run
    # Steps it ran alone but could not be judged at: it failed only where nothing can be compared (`unjudgeable`).
    unjudged_steps: int = 0
    first_unjudged_step: int | None = None
    # True when the last step it ran alone left it unjudged; the steps compared only in part after it count so too
    # (the stepper's `_count_lockstep_failures`).
    unjudged_now: bool = False

    @property
    def passed(self) -> bool | None:
        """Right at every step it was judged on; None when it never was (a side without `run_layer`)."""
        return None if self.checked_steps == 0 else self.failed_steps == 0

    @property
    def origin(self) -> str | None:
        """`local` (the layer's own error), `propagated` (right locally, fed inputs already off), `unjudged` (right
        and agreeing where judged, not judged at some steps, where values were non-finite: see `unjudgeable`), None
        (no error, or never judged on its own: then nothing tells the two apart)."""
        if self.failed_steps:
            return "local"
        if self.lockstep_failed_steps and self.checked_steps:
            return "propagated"
        return "unjudged" if self.unjudged_steps else None


@dataclass
class LocalStep:
    """One layer judged at one step: the comparisons, and what a diagnosis needs (made only when asked for)."""

    comparisons: list[TensorComparison]
    tensors: dict[str, np.ndarray]  # what the side gave back
    context: Context

    @property
    def passed(self) -> bool:
        """Every tensor of the layer within tolerance."""
        return all(c.passed for c in self.comparisons)

    def diagnose(self, reference: dict[str, np.ndarray]) -> Diagnosis | None:
        """Why the layer failed at this step (None when it did not)."""
        layer = self.context.feed.layer.name
        return diagnose_layer(layer, self.comparisons, self.tensors, reference, self.context)


class LocalJudge:
    """Feeds each layer from the reference's tensors and judges what the side gives back."""

    def __init__(self, spec: NetworkSpec, dtype: object, lr: float, tie_policy: str = "first") -> None:
        self.spec, self.dtype, self.lr = spec, np.dtype(dtype), lr
        self.tie_policy = tie_policy  # the reference's pools' tie rule: a diagnosis names it
        self.names = {layer.name: spec.layer_tensors(layer.name) for layer in spec.layers}
        self.every_layer = tuple(layer.name for layer in spec.layers)
        self.routing_layers = tuple(layer.name for layer in spec.layers if layer.kind in ROUTING_KINDS)
        self.alone_every = ALONE_EVERY
        self.workspace = Workspace()
        # The normalised image, as both sides compute it (bit-identical: tested in parity_tests/test_bridge.py).
        self._normalizer = scratch.build_network(spec, dtype=self.dtype)

    def feeds(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        reference: dict[str, np.ndarray],
        params_before: dict[str, np.ndarray],
        layers: tuple[str, ...] | None = None,
    ) -> Iterator[LayerFeed]:
        """The `LayerFeed` of `layers` (every layer by default), in layer order, from the reference's tensors of a step
        compared in full."""
        spec, last = self.spec, len(self.spec.layers) - 1
        for position, layer in enumerate(spec.layers):
            if layers is not None and layer.name not in layers:
                continue
            if position == 0:
                inputs = self._normalizer.normalize(images)
            else:
                inputs = reference[spec.name_of(spec.layers[position - 1].name, "out")]
            if position == last:
                d_out = reference[spec.name_of(layer.name, "d_out")]
            else:
                d_out = reference[spec.name_of(spec.layers[position + 1].name, "d_in")]
            yield LayerFeed(
                layer,
                inputs,
                d_out,
                {param: params_before[spec.name_of(layer.name, "param", param)] for param, _ in layer.params},
                {param: reference[spec.name_of(layer.name, "d_param", param)] for param, _ in layer.params},
                labels,
                self.lr,
                logits=reference[spec.name_of(layer.name, "out")] if position == last else None,
            )

    def layers_alone(self, step_agreed: bool, verdicts: dict[str, LayerVerdict]) -> tuple[str, ...]:
        """The layers to run alone at this step compared in full (`step_agreed`: every tensor of the network compared
        and within tolerance in the lockstep run); the others' verdicts are implied (`count_implied`)."""
        first = next(iter(verdicts.values()))  # every layer has seen as many steps; restored with a checkpoint
        seen = first.checked_steps + first.unjudged_steps
        return self.every_layer if not step_agreed or seen % self.alone_every == 0 else self.routing_layers

    def count_implied(self, verdicts: dict[str, LayerVerdict], alone: tuple[str, ...]) -> None:
        """Count this step as checked, and passed, for every layer not in `alone`."""
        for name, verdict in verdicts.items():
            if name not in alone:
                verdict.checked_steps += 1
                verdict.implied_steps += 1
                verdict.unjudged_now = False

    def judge(
        self,
        side: LayerRunner,
        index: int,
        images: np.ndarray,
        labels: np.ndarray,
        reference: dict[str, np.ndarray],
        params_before: dict[str, np.ndarray],
        verdicts: dict[str, LayerVerdict],
        layers: tuple[str, ...] | None = None,
        step_agreed: bool = False,
    ) -> dict[str, LocalStep]:
        """Judge `layers` (every layer by default) at step `index`; update `verdicts` and return each one's result.
        A layer is left unjudged (`unjudgeable`) only at a step where the whole network did not agree (`step_agreed`
        false): one that fails alone where the network agreed is wrong, whatever it was fed."""
        feeds = list(self.feeds(images, labels, reference, params_before, layers))
        given = [side.run_layer(feed) for feed in feeds]
        # One comparison pass over every layer's tensors (their names are distinct), split by layer after.
        names = [
            [name for name in self.names[feed.layer.name] if name in ours and name in reference]
            for feed, ours in zip(feeds, given, strict=True)
        ]
        merged = {name: ours[name] for ours, layer_names in zip(given, names, strict=True) for name in layer_names}
        tolerances = tensor_tolerances(self.spec.tensors, self.dtype, len(labels))
        compared = iter(compare_many(list(merged), merged, reference, self.dtype, tolerances, self.workspace))
        results = {}
        for feed, ours, layer_names in zip(feeds, given, names, strict=True):
            comparisons = [next(compared) for _ in layer_names]
            verdict = verdicts[feed.layer.name]
            failed = [c for c in comparisons if not c.passed]
            if failed and not step_agreed and unjudgeable(feed, failed, ours, reference):
                verdict.unjudged_steps += 1
                verdict.unjudged_now = True
                if verdict.first_unjudged_step is None:
                    verdict.first_unjudged_step = index
                continue  # no LocalStep: a divergence here is explained from the whole run's tensors
            verdict.checked_steps += 1
            verdict.unjudged_now = False
            verdict.worst_tolerance_used = max([verdict.worst_tolerance_used] + [c.tolerance_used for c in comparisons])
            local = LocalStep(
                comparisons, ours, Context(self.spec, self.dtype, self.lr, feed, tie_policy=self.tie_policy)
            )
            if failed:
                verdict.failed_steps += 1
                if verdict.step is None:  # diagnosed once: the first failure is the one a report shows
                    verdict.step, verdict.tensor, verdict.diagnosis = index, failed[0].name, local.diagnose(reference)
            results[feed.layer.name] = local
        return results


def unjudgeable(
    feed: LayerFeed,
    failed: list[TensorComparison],
    ours: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
) -> bool:
    """Whether a layer's failures at a step say nothing of the layer: it was fed a non-finite value (the run has
    overflowed), or every element out of tolerance is NaN on both sides (both overflowed alike, from finite inputs).
    A sign, a scale or a routing error shows as finite numbers, or as NaN on one side only, and is still judged, as
    is a shape or dtype mismatch, whatever the values. Each failure is read under the tolerance it was judged by."""
    if any(comparison.problem for comparison in failed):
        return False
    fed = [feed.inputs, feed.d_out, *feed.params.values()]
    if not all(np.isfinite(array).all() for array in fed):
        return True
    for comparison in failed:
        scratch, theirs = ours[comparison.name], reference[comparison.name]
        out = patterns.beyond(scratch, theirs, comparison.tolerance)
        if not (np.isnan(scratch[out]).all() and np.isnan(theirs[out]).all()):
            return False
    return True


def fresh_verdicts(spec: NetworkSpec) -> dict[str, LayerVerdict]:
    """A verdict per layer, in layer order, before any step."""
    return {layer.name: LayerVerdict(layer.name, layer.kind) for layer in spec.layers}


def copy_verdicts(verdicts: dict[str, LayerVerdict]) -> dict[str, LayerVerdict]:
    """Independent copies (their fields are immutable values), for a checkpoint to restore."""
    return {name: replace(verdict) for name, verdict in verdicts.items()}
