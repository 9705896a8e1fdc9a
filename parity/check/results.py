"""What a check found: each lockstep run of the implementation (the main run or a probe) and the check as a whole,
with the verdicts and texts the terminal and the report show."""

from __future__ import annotations

from dataclasses import dataclass, field

from parity.check.infer import Architecture
from parity.check.loader import Impl
from parity.check.usercode import ImplCrash
from parity.lockstep.local import LayerVerdict
from parity.lockstep.records import LockstepRecord

PROBE_NAMES = {"constant": "constant images", "large-logits": "large logits", "odd-size": "odd sizes"}
# Why a layer can be wrong alone while the whole network agrees, by layer kind: a pool's windows may tie otherwise on
# the reference's inputs (a rounding apart from its own), and a rule wrong only for some tie patterns shows there.
STATE = "does it keep state between calls?"
ALONE_ONLY_CAUSES = {
    "pool": "its windows can tie otherwise on the reference's inputs, a rounding apart from its own: a routing rule "
    "wrong only for some tie patterns shows there first",
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
    crash: ImplCrash | None = None  # the user's code raised, returned something unusable, or hung
    crash_step: int | None = None
    skipped: str | None = None  # why a probe could not run (the network does not fit its image size)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """Every step within tolerance and no exception from the implementation (a skipped probe claims nothing)."""
        return self.crash is None and self.record.passed

    @property
    def wrong_alone(self) -> LayerVerdict | None:
        """The layer first wrong on its own, when that is the first failure: nothing diverged in the whole-network
        run before it (or the code raised only later). Code that computes differently when called again on the same
        inputs (state kept between calls) can fail only there."""
        if self.record.first_divergence is not None:
            return None
        failed = [verdict for verdict in self.record.layers.values() if verdict.passed is False]
        first = min(failed, key=lambda verdict: verdict.step, default=None)  # the earliest; ties in layer order
        if first is None or (self.crash is not None and self.crash_step < first.step):
            return None
        return first

    @property
    def layer(self) -> str | None:
        """The spec layer blamed for the first failure (`conv1`, `pool1`, `dense1`, `loss`; None when it passed)."""
        if self.record.first_divergence is not None:
            return self.record.first_divergence.layer
        if self.wrong_alone is not None:
            return self.wrong_alone.name
        return self.crash.layer if self.crash is not None else None

    @property
    def tensor(self) -> str | None:
        """The first tensor out of tolerance (None for a pass or a crash)."""
        if self.record.first_divergence is not None:
            return self.record.first_divergence.tensor
        return self.wrong_alone.tensor if self.wrong_alone is not None else None

    @property
    def failure_step(self) -> int | None:
        """The step of the first failure."""
        if self.record.first_divergence is not None:
            return self.record.first_divergence.step
        if self.wrong_alone is not None:
            return self.wrong_alone.step
        return self.crash_step if self.crash is not None else None

    @property
    def verdict(self) -> str:
        """PARITY, DIVERGED, CRASHED, HUNG or SKIPPED."""
        if self.record.first_divergence is not None or self.wrong_alone is not None:
            return "DIVERGED"
        if self.crash is not None:
            return "HUNG" if self.crash.timed_out else "CRASHED"
        return "SKIPPED" if self.skipped else "PARITY"

    @property
    def failing_steps(self) -> int:
        """How many steps had a tensor out of tolerance."""
        return sum(not step.passed for step in self.record.steps)

    @property
    def run_name(self) -> str:
        """`main run`, or what the probe exercises: `odd sizes`."""
        return "main run" if self.name == "main" else PROBE_NAMES.get(self.name, self.name)

    def cause(self) -> str:
        """A short cause for tables: `tie-policy difference`, `softmax overflow`, `MaxPool2.forward raised ...`."""
        if self.record.first_divergence is None:
            alone = self.wrong_alone
            if alone is not None:
                return f"{alone.diagnosis.label if alone.diagnosis else 'wrong'}, on its own only"
            return self.crash_text() if self.crash else ""
        div = self.record.first_divergence
        if div.comparison.problem and div.diagnosis.kind == "unexplained":
            return div.comparison.problem.split(";")[0]
        return div.diagnosis.label

    def crash_text(self) -> str:
        """`MaxPool2.forward (pool1) raised ValueError: ... at step 0`, with whether every tensor agreed before."""
        crash = self.crash
        text = f"{crash.where} ({crash.layer}) {crash.detail} at step {self.crash_step}"
        if crash.timed_out:
            text += " (--timeout SECONDS allows a call longer)"
        earlier = len(self.record.steps)
        if earlier and self.record.first_divergence is None and self.record.passed:
            text += f"; every tensor agreed with PyTorch at the {earlier} step{'s' if earlier > 1 else ''} before it"
        return text

    def explanation(self) -> str:
        """The first divergence in full (the engine's diagnosis, refined with the step's tensors), or the crash."""
        if self.record.first_divergence is None:
            alone = self.wrong_alone
            if alone is not None:
                why = f": {alone.diagnosis.text_for(alone.tensor)}" if alone.diagnosis else ""
                message = (
                    f"step {alone.step}, {alone.name} {alone.tensor}, on its own{why}. Every tensor of the "
                    f"whole-network run agreed with PyTorch at that step: {alone.name} gives another result when it "
                    f"is run alone on the reference's inputs and weights ({ALONE_ONLY_CAUSES.get(alone.kind, STATE)})."
                )
                return message + (f" Then {self.crash_text()}." if self.crash is not None else "")
            if self.crash is None:
                return f"skipped: {self.skipped}" if self.skipped else "no divergence"
            verb = "fails on" if self.name != "main" else "fails in the"
            return f"{verb} {self.run_name}: {self.crash_text()}"
        message = self.record.first_divergence.message()
        if self.crash is not None:
            message += f" Then {self.crash_text()}."
        return message


@dataclass
class CheckResult:
    """A main lockstep run and the edge probes, for one implementation read as one architecture."""

    impl: Impl
    arch: Architecture
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
