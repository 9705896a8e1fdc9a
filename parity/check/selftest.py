"""`cnn-parity selftest`: does `check` catch real bugs, blame the right layer, and pass correct code?

Two correct implementations are checked as they are, and then once per bug in `parity.check.bugs`, each a small
patch of one layer: the tutorial's three classes in parity/check/examples/fixed_cnn (first-max pool routing, a
shifted softmax, a conv that returns its input gradient), and the two-conv network in
parity/check/examples/two_conv_cnn, built from `--layers` (`bugs.TWO_CONV_LAYERS`) with its architecture read from
the code. It passes when the correct code shows parity over the default steps and every edge probe (no false
positive), and every bug is caught, by the main run or a probe, with its first divergence blamed on the spec layer
the bug is in (`conv1` for `Conv3x3`, `pool1` for `MaxPool2`, `dense1` for `Softmax`, `loss` for the softmax it
computes; `conv2` for the two-conv network's `ConvDeep`, ...). The "loss" column shows whether the loss alone would
have noticed at that step. Exit 0 when all of that holds, 1 otherwise, 2 on bad usage (an unknown bug).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parity.check.bugs import BUGS, TUTORIAL, TUTORIAL_BUGS, TWO_CONV, TWO_CONV_LAYERS, Bug, with_bug
from parity.check.command import import_torch
from parity.check.layercalls import parse_layers
from parity.check.loader import Impl, load_impl
from parity.check.names import ImplError
from parity.check.results import CheckResult
from parity.check.run import DEFAULT_LR, DEFAULT_STEPS, PROBES, check_impl
from parity.check.usercode import ImplCrash
from parity.cli.errors import EXIT_DIVERGENCE, EXIT_PARITY, UsageError
from parity.engine.tables import text_table
from parity.engine.tolerances import tolerance_for
from scratch.argtypes import DATA_DIR_HELP, nonnegative_int, positive_int

DEFAULT_BASE = Path(__file__).resolve().parent / "examples" / "fixed_cnn"  # package data
TWO_CONV_BASE = DEFAULT_BASE.parent / "two_conv_cnn"


@dataclass
class Outcome:
    """The check of the correct implementation (bug None) or of one injected bug."""

    bug: Bug | None
    result: CheckResult
    seconds: float
    base: str = TUTORIAL  # which correct implementation was checked (or patched)

    @property
    def caught(self) -> bool:
        """The check reported a divergence (or the code raised)."""
        return not self.result.passed

    @property
    def blamed(self) -> str | None:
        """The spec layer the check blamed first."""
        failure = self.result.first_failure
        return failure.layer if failure else None

    @property
    def ok(self) -> bool:
        """Correct code passes; a bug is caught and blamed on its own spec layer."""
        if self.bug is None:
            return self.result.passed
        return self.caught and self.blamed == self.bug.layer

    def loss_agrees(self) -> str:
        """Whether the loss alone agreed with PyTorch at the step where the check caught the bug."""
        failure = self.result.first_failure
        if failure is None or failure.failure_step is None or failure.failure_step >= len(failure.record.steps):
            return ""
        step = failure.record.steps[failure.failure_step]
        allowed = float(tolerance_for(np.float64).allowed(np.float64(step.reference_loss)))
        return "agrees" if abs(step.scratch_loss - step.reference_loss) <= allowed else "differs"

    def row(self) -> dict[str, object]:
        """One row of the self-test table."""
        failure = self.result.first_failure
        if failure is None:
            where, first = "-", "parity everywhere"
        else:
            where = "main run" if failure.name == "main" else f"{failure.name} probe"
            tensor = f" {failure.tensor}" if failure.tensor else ""
            first = f"step {failure.failure_step}{tensor}: {failure.cause()}"
        return {
            "network": self.base,
            "bug": self.bug.name if self.bug else "(none: the correct code)",
            "injected in": f"{self.bug.layer} ({self.bug.cls})" if self.bug else "-",
            "caught by": where,
            "first divergence": first,
            "blamed": self.blamed or "-",
            "loss then": self.loss_agrees() or "-",
            "result": "OK"
            if self.ok
            else ("MISSED" if self.bug and not self.caught else "WRONG" if self.bug else "FALSE POSITIVE"),
        }


def load_bases(tutorial: str | Path = DEFAULT_BASE) -> dict[str, Impl]:
    """The correct implementations the bugs patch: the tutorial's trio, and the two-conv network from --layers."""
    return {
        TUTORIAL: load_impl(str(tutorial)),
        TWO_CONV: load_impl(_shown(str(TWO_CONV_BASE)), calls=parse_layers(TWO_CONV_LAYERS)),
    }


def run_all(
    bases: dict[str, Impl],
    train_images: np.ndarray,
    train_labels: np.ndarray,
    *,
    bugs: tuple[Bug, ...] = BUGS,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
) -> list[Outcome]:
    """`run_bugs` for each base with bugs among `bugs`, its correct code first."""
    outcomes = []
    for name, base in bases.items():
        mine = tuple(bug for bug in bugs if bug.base == name)
        if mine:
            outcomes += run_bugs(base, train_images, train_labels, bugs=mine, steps=steps, seed=seed, base_name=name)
    return outcomes


def run_bugs(
    base: Impl,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    *,
    bugs: tuple[Bug, ...] = TUTORIAL_BUGS,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    lr: float = DEFAULT_LR,
    clean: bool = True,
    base_name: str = TUTORIAL,
) -> list[Outcome]:
    """Check the correct implementation over every step and probe, then each bug until its first divergence. Where
    the correct code fails its own check, its bugs are not run: a bug's divergence (or hang) could not be told from
    the code's own, and each could take as long as a hang's timeout."""
    outcomes = []
    if clean:
        started = time.perf_counter()
        result = check_impl(base, train_images, train_labels, steps=steps, seed=seed, lr=lr, probes=PROBES)
        outcomes.append(Outcome(None, result, time.perf_counter() - started, base_name))
        if not result.passed:
            return outcomes
    for bug in bugs:
        started = time.perf_counter()
        try:
            result = check_impl(
                with_bug(base, bug),
                train_images,
                train_labels,
                steps=steps,
                seed=seed,
                lr=lr,
                probes=PROBES,
                stop_at_first=True,
            )
        except ImplCrash as crash:  # before any step: the patch does not fit this implementation
            raise ImplError(
                f"bug {bug.name} does not apply to it ({crash}): the bugs patch the helper methods of "
                f"{_shown(str(DEFAULT_BASE))} (see parity/check/bugs.py), which it must keep"
            ) from None
        outcomes.append(Outcome(bug, result, time.perf_counter() - started, base_name))
    return outcomes


def add_selftest_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `cnn-parity selftest`."""
    parser.add_argument(
        "--base",
        default=str(DEFAULT_BASE),
        metavar="PATH",
        help="the correct tutorial-interface implementation the tutorial's bugs patch "
        "(parity/check/examples/fixed_cnn); the two-conv bugs patch parity/check/examples/two_conv_cnn",
    )
    parser.add_argument(
        "--bug", action="append", default=[], metavar="NAME", help="run only these bugs (repeat); see --list"
    )
    parser.add_argument("--list", action="store_true", help="list the bugs and exit")
    parser.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS, help=f"main-run steps ({DEFAULT_STEPS})")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="shared initial weights and data order (0)")
    parser.add_argument("--data-dir", default=None, metavar="DIR", help=DATA_DIR_HELP)


def run_selftest(args: argparse.Namespace) -> int:
    """Run the self-test and print one row per bug; exit 0 when every bug is caught and blamed right."""
    if args.list:
        for bug in BUGS:
            print(f"{bug.name:36} {bug.base:9} {bug.layer:7} {bug.cls:10} {bug.mistake}")
        return EXIT_PARITY
    from scratch.splits import check_steps

    check_steps(args.steps, f"--steps {args.steps}")  # refused now, as `check` does, not after hours of probes
    known = {bug.name: bug for bug in BUGS}
    unknown = [name for name in args.bug if name not in known]
    if unknown:
        raise UsageError(f"unknown bug {', '.join(unknown)}; `cnn-parity selftest --list` shows them")
    bugs = tuple(known[name] for name in args.bug) if args.bug else BUGS
    if not args.base.strip():  # as check's --impl '': not read as the working directory
        raise UsageError("--base: empty; pass the directory of a correct tutorial-interface implementation")
    try:
        bases = load_bases(_shown(args.base))
    except ImplError as error:
        raise UsageError(f"the correct implementation: {error}") from None

    from scratch.splits import load_experiment_data

    import_torch("selftest")
    from parity.threads import one_thread_each

    train, _ = load_experiment_data(args.data_dir)
    started = time.perf_counter()
    try:
        with one_thread_each():  # torch's and NumPy's BLAS: see parity.threads
            outcomes = run_all(bases, train.images, train.labels, bugs=bugs, steps=args.steps, seed=args.seed)
    except ImplError as error:
        raise UsageError(f"the correct implementation: {error}") from None
    print(render(bases, outcomes, args.steps, time.perf_counter() - started, bugs))
    return EXIT_PARITY if all(outcome.ok for outcome in outcomes) else EXIT_DIVERGENCE


def _not_run(outcomes: list[Outcome], requested: tuple[Bug, ...]) -> list[Bug]:
    """The requested bugs of each base whose correct code failed its own check (`run_bugs` skips them)."""
    failed = {outcome.base for outcome in outcomes if outcome.bug is None and not outcome.ok}
    return [bug for bug in requested if bug.base in failed]


def _shown(path: str) -> str:
    """`path` relative to the working directory when it lies below it (parity/check/examples/..., not /home/...)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def render(
    bases: dict[str, Impl], outcomes: list[Outcome], steps: int, seconds: float, requested: tuple[Bug, ...] = BUGS
) -> str:
    """The self-test table, each bug's mistake, the bugs not run (their correct code failed), and the verdict."""
    injected = ", ".join(
        f"{sum(o.bug is not None and o.base == name for o in outcomes)} into {base.label}"
        + (f" (--layers {TWO_CONV_LAYERS})" if base.calls is not None else "")
        for name, base in bases.items()
        if any(o.base == name for o in outcomes)
    )
    lines = [
        f"cnn-parity selftest: {sum(o.bug is not None for o in outcomes)} bugs injected: {injected}; "
        f"each checked like `cnn-parity check` ({steps} real MNIST steps, then the edge probes {', '.join(PROBES)}; "
        "a bug's run stops at its first divergence)",
        "",
        text_table([o.row() for o in outcomes]),
    ]
    not_run = _not_run(outcomes, requested)
    if not_run:
        lines.append("")
    lines += [
        f"Not run: {', '.join(bug.name for bug in not_run if bug.base == name)}: the correct code of "
        f"{bases[name].label} fails its own check above, so a bug's divergence could not be told from the code's own"
        for name in dict.fromkeys(bug.base for bug in not_run)
    ]
    bugs = [o for o in outcomes if o.bug]
    if bugs:
        lines += ["", "What each bug is (the mistake a person made):"]
        lines += [f"  {o.bug.name}: {o.bug.mistake} ({o.bug.layer}, in {o.bug.cls})" for o in bugs]
    cleans = [o for o in outcomes if o.bug is None]
    caught = sum(o.ok for o in bugs)
    subtle = [o.bug.name for o in bugs if o.ok and o.loss_agrees() == "agrees"]
    lines.append("")
    if subtle:
        lines.append(
            f"Invisible in the loss when caught (only a tensor-by-tensor comparison sees them): {', '.join(subtle)}."
        )
    verdict = f"{caught} of {len(bugs)} bugs caught and blamed on the right layer"
    verdict += f", {len(not_run)} not run" if not_run else ""
    if cleans:
        verdict += "; the correct code " + (
            "passes everywhere (no false positive)" if all(o.ok for o in cleans) else "FAILS (a false positive)"
        )
    ok = all(o.ok for o in outcomes)
    lines.append(
        f"{'PASS' if ok else 'FAIL'}: {verdict} (exit {EXIT_PARITY if ok else EXIT_DIVERGENCE}) [{seconds:.1f} s]"
    )
    return "\n".join(lines)
