"""`cnn-parity report`: the lockstep experiment (scratch vs PyTorch) on any network spec, written up as a report.

Runs, on real MNIST offline, the tutorial's experiment (1,000 train / 1,000 test digits, 3 epochs, lr 0.005, seeded
shuffles) on `--arch` (default the tutorial's `conv3x8,pool2,dense10`) in batches of `--batch-size` (default 1, as
the tutorial) for each dtype (`--dtypes`) with the tie rule of `--tie-policy` (PyTorch's "first" by default), plus,
when the spec has a max-pool and `--no-faithful` is not given, a tutorial-faithful run (tie policy "all", the
tutorial's softmax) that shows where and why the tutorial's own code departs from PyTorch.
Writes DIR/report.md, DIR/report.json and PNG plots atomically, prints a summary, and exits 0 when every parity
claim holds, 1 when one fails, 2 on bad usage or input.

This module is imported by `cnn-parity --help` and by torch-free commands: torch, the reference and the
experiment are imported only inside `run`.
"""

from __future__ import annotations

import argparse
import functools
import gc
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from parity.lockstep.stepper import DEFAULT_REPORT_STRIDE, always_compared
from scratch.argtypes import DATA_DIR_HELP
from scratch.data import DataError, check_data_dir
from scratch.spec import DEFAULT_SPEC, NetworkSpec, parse_spec, pools_can_tie

DEFAULT_OUT = "reports/latest"
MNIST_SHAPE = (28, 28)  # the bundled digits' size: a spec is checked against it before any data is read
DTYPES = ("float64", "float32")
TIE_POLICIES = ("first", "all")
MODES = ("free", "teacher")
TITLE = "cnn-parity report: the tutorial CNN, scratch vs PyTorch, tensor by tensor"
PROGRESS_DELAY_S = 2.0  # the progress bar appears only for runs longer than this


def title(arch: str = DEFAULT_SPEC) -> str:
    """The report's title: the tutorial CNN's, or the spec's for another architecture."""
    return TITLE if arch == DEFAULT_SPEC else TITLE.replace("the tutorial CNN", f"the CNN {arch}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `cnn-parity report`. Values are checked in `run`, so a bad one gives one clear line."""
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output directory ({DEFAULT_OUT})")
    parser.add_argument(
        "--arch",
        default=DEFAULT_SPEC,
        metavar="SPEC",
        help="the network, comma-separated conv{K}x{F}[b], relu, pool{K}, dense{N}, ending in dense10 "
        f"({DEFAULT_SPEC}, the tutorial's)",
    )
    parser.add_argument(
        "--batch-size", default="1", metavar="B", help="images per SGD step (1, the tutorial's); the last may be short"
    )
    parser.add_argument("--epochs", default="3", metavar="N", help="passes over the training set (3)")
    parser.add_argument("--train-size", default="1000", metavar="N", help="training digits (1000)")
    parser.add_argument("--test-size", default="1000", metavar="N", help="test digits (1000)")
    parser.add_argument(
        "--seed",
        default="0",
        metavar="N",
        help="seeds the weight init and the per-epoch shuffles (0); the data split is fixed",
    )
    parser.add_argument(
        "--dtypes",
        default=",".join(DTYPES),
        metavar="LIST",
        help="comma-separated dtypes of the parity runs (float64,float32)",
    )
    parser.add_argument(
        "--tie-policy",
        default="first",
        metavar="first|all",
        help="max-pool tie rule of the parity runs: 'first' (PyTorch's) or 'all' (the tutorial's; expected to fail)",
    )
    parser.add_argument("--data-dir", default=None, metavar="DIR", help=DATA_DIR_HELP)
    parser.add_argument(
        "--stride",
        default=str(DEFAULT_REPORT_STRIDE),
        metavar="K",
        help="compare every tensor every K steps, the small ones (the logits, the loss and the parameter gradients "
        f"but the dense weights'; for the tutorial {', '.join(always_compared(parse_spec(), 'free'))}) at every "
        "step; a failure is replayed in full from the last full comparison, so it is still named exactly "
        f"({DEFAULT_REPORT_STRIDE}; 1 compares every tensor at every step)",
    )
    parser.add_argument(
        "--mode",
        default="free",
        metavar="free|teacher",
        help="'free': each side trains on its own weights (drift); 'teacher': scratch is reset to the reference's "
        "weights before every step (one-step error) (free)",
    )
    parser.add_argument("--no-faithful", action="store_true", help="skip the tutorial-faithful demonstration run")
    parser.add_argument(
        "--jobs",
        default=None,
        metavar="N",
        help="runs side by side in N worker processes (default: one per core); the report is the same for any N",
    )


@dataclass(frozen=True)
class Options:
    """The checked options."""

    out: Path
    arch: str  # the spec text, canonical (as `NetworkSpec.text`)
    batch_size: int
    epochs: int
    train_size: int
    test_size: int
    seed: int
    dtypes: tuple[str, ...]
    tie_policy: str
    data_dir: Path | None
    stride: int
    mode: str
    faithful: bool
    jobs: int = 1  # worker processes; not part of `command_line`: it does not shape the results

    def command_line(self) -> str:
        """The canonical command (every option that shapes the results; not --out) for the report's header."""
        parts = [
            "cnn-parity",
            "report",
            "--arch",
            self.arch,
            "--batch-size",
            str(self.batch_size),
            "--epochs",
            str(self.epochs),
            "--train-size",
            str(self.train_size),
            "--test-size",
            str(self.test_size),
            "--seed",
            str(self.seed),
            "--dtypes",
            ",".join(self.dtypes),
            "--tie-policy",
            self.tie_policy,
            "--stride",
            str(self.stride),
            "--mode",
            self.mode,
        ]
        if self.data_dir is not None:
            parts += ["--data-dir", str(self.data_dir)]
        if not self.faithful:
            parts.append("--no-faithful")
        return shlex.join(parts)


def _integer(option: str, text: object, minimum: int) -> int:
    kind = "a positive integer" if minimum == 1 else "a non-negative integer"
    try:
        value = int(str(text).strip())
    except ValueError:
        raise _usage(f"{option} must be {kind}, got {text!r}") from None
    if value < minimum:
        raise _usage(f"{option} must be {kind}, got {text!r}")
    return value


def _choice(option: str, text: object, choices: tuple[str, ...]) -> str:
    value = str(text).strip()
    if value not in choices:
        raise _usage(f"{option} must be one of {', '.join(choices)}; got {text!r}")
    return value


def _usage(message: str) -> Exception:
    from parity.cli.errors import UsageError  # a leaf module

    return UsageError(message)


def check_arch(text: object, image_shape: tuple[int, int] | None = MNIST_SHAPE) -> NetworkSpec | str:
    """The spec of `--arch` on images of `image_shape` (its canonical text when the shape is not known yet: None),
    or UsageError naming the bad item and the shape at that point."""
    if image_shape is None:  # --data-dir: its image size is known once read; the items' syntax can be checked now
        from scratch.argtypes import network_spec

        try:
            return network_spec(str(text))
        except argparse.ArgumentTypeError as error:
            raise _usage(f"--arch: {error}") from None
    try:
        return parse_spec(str(text), tuple(image_shape))
    except ValueError as error:
        raise _usage(f"--arch: {error}") from None


def check_options(args: argparse.Namespace) -> Options:
    """Turn the raw option strings into checked values, or raise UsageError naming the option."""
    dtypes = tuple(part.strip() for part in str(args.dtypes).split(","))
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise _usage(f"--dtypes: unknown dtype {dtype!r}; expected a comma-separated list of {', '.join(DTYPES)}")
    if len(set(dtypes)) != len(dtypes):
        raise _usage(f"--dtypes: {args.dtypes!r} names a dtype twice")
    data_dir = None
    if args.data_dir is not None:
        try:
            data_dir = check_data_dir(args.data_dir)
        except DataError as error:
            raise _usage(f"--data-dir: {error}") from None
    arch = check_arch(args.arch, MNIST_SHAPE if data_dir is None else None)
    if not str(args.out).strip():  # Path("") is ".", which would be refused as the working directory
        raise _usage("--out: empty; pass a new directory for the report")
    return Options(
        out=Path(args.out),
        arch=arch if isinstance(arch, str) else arch.text,
        batch_size=_integer("--batch-size", args.batch_size, 1),
        epochs=_integer("--epochs", args.epochs, 1),
        train_size=_integer("--train-size", args.train_size, 1),
        test_size=_integer("--test-size", args.test_size, 1),
        seed=_integer("--seed", args.seed, 0),
        dtypes=dtypes,
        tie_policy=_choice("--tie-policy", args.tie_policy, TIE_POLICIES),
        data_dir=data_dir,
        stride=_integer("--stride", args.stride, 1),
        mode=_choice("--mode", args.mode, MODES),
        faithful=not args.no_faithful,
        jobs=_jobs(args.jobs),
    )


def _jobs(text: object) -> int:
    if text is None:
        from parity.lockstep.parallel import default_jobs

        return default_jobs()
    return _integer("--jobs", text, 1)


def faithful_run(options: Options) -> bool:
    """Whether the report adds the tutorial-faithful demonstration (a spec whose pools cannot tie has no tie rule to
    show)."""
    return options.faithful and pools_can_tie(options.arch)


def run_count(options: Options) -> int:
    """How many runs `configs` makes, known without importing the experiment (nor torch)."""
    return len(options.dtypes) + faithful_run(options)


def configs(options: Options):
    """The parity runs (one per dtype), then the tutorial-faithful demonstration; and the set of demonstrations.

    The demonstration shows the tutorial's max-pool tie rule at work, so a spec without a pool has none."""
    from parity.lockstep.experiment import ExperimentConfig

    common = {
        "arch": options.arch,
        "batch_size": options.batch_size,
        "epochs": options.epochs,
        "seed": options.seed,
        "stride": options.stride,
        "mode": options.mode,
    }
    runs = [ExperimentConfig(dtype=dtype, tie_policy=options.tie_policy, **common) for dtype in options.dtypes]
    demonstrations = set()
    if faithful_run(options):
        faithful = ExperimentConfig(dtype="float64", tie_policy="all", softmax="tutorial", **common)
        runs.append(faithful)
        demonstrations.add(faithful)
    return runs, demonstrations


def _data_text(train: str, test: str) -> str:
    """`source: train 1,000 (seed 0), test 1,000 (seed 0)` for two parts of one source, else both in full."""
    (train_source, _, train_part), (test_source, _, test_part) = train.rpartition(": "), test.rpartition(": ")
    return f"{train_source}: {train_part}, {test_part}" if train_source == test_source else f"{train}; {test}"


def run(args: argparse.Namespace) -> int:
    """Check options, run every experiment with a progress bar, write the report, print the summary."""
    options = check_options(args)
    from reports.writer import check_destination

    check_destination(options.out)  # before minutes of work, not after
    from scratch.splits import run_steps

    run_steps(options.epochs, options.train_size, options.batch_size)  # a run that cannot end is refused now
    jobs = min(options.jobs, run_count(options))
    if jobs > 1:
        from parity.lockstep.parallel import start_fork_server

        start_fork_server("reports.preload")  # the workers' imports overlap this process's own, and the data's loading

    from tqdm import tqdm

    from parity.cli.errors import mark_written
    from parity.lockstep.parallel import run_experiments
    from reports.environment import run_environment
    from reports.jsondoc import run_facts
    from reports.plots import PLOTS
    from reports.plots import render as render_plot
    from reports.plots import warm_up as warm_up_plots
    from reports.summary import layers_table, summary_table, verdict_line
    from reports.writer import build_document, write_document
    from scratch.splits import TooFewDigits, load_experiment_data, steps_per_epoch

    try:
        train, test = load_experiment_data(options.data_dir, n_train=options.train_size, n_test=options.test_size)
    except TooFewDigits as error:
        raise _usage(error.in_options({"train": "--train-size", "test": "--test-size"})) from None
    check_arch(options.arch, tuple(int(side) for side in train.images.shape[1:]))  # now against the real size
    runs, demonstrations = configs(options)
    if jobs > 1:
        # Idle until the workers start (the fork server is loading torch): matplotlib is warmed up now, for the last
        # run's costliest plot, drawn here (`then_here` below) while the workers draw the others.
        warm_up_plots()
    # What the imports and the data made lives as long as the command: frozen, no collection looks at it again (a
    # full one over it took ~0.1 s, after each run's result arrived and in each run made in this process).
    gc.freeze()
    try:
        started = time.perf_counter()
        total = len(runs) * options.epochs * steps_per_epoch(len(train), options.batch_size)
        with tqdm(total=total, unit="step", delay=PROGRESS_DELAY_S, file=sys.stderr, leave=False, disable=None) as bar:
            bar.set_description(f"{len(runs)} runs" + (f", {jobs} at a time" if jobs > 1 else ""), refresh=False)
            # After each run, one task per plot (the costliest, the error panels, first), one for what the report
            # says of it, and one for the threads and PyTorch it ran with: the last run's are worked out side by side.
            # (Where the runs are made in workers, this process never imports torch.)
            kinds = sorted(PLOTS, key=lambda kind: kind != "errors")
            results, values = run_experiments(
                runs,
                train,
                test,
                jobs,
                on_steps=lambda _config, steps: bar.update(steps),
                then=[*(functools.partial(render_plot, kind) for kind in kinds), run_facts, run_environment],
                then_here=(kinds.index("errors"),),  # needs matplotlib, not torch
            )
            drawn = [dict(zip(kinds, run_values[: len(kinds)], strict=True)) for run_values in values]
        document = build_document(
            results,
            title=title(options.arch),
            command=options.command_line(),
            data_source=_data_text(train.source, test.source),
            demonstrations=demonstrations,
            facts=[run_values[len(kinds)] for run_values in values],
            run_environment=values[0][len(kinds) + 1],  # every run's is the same: the workers are alike
        )
        report = write_document(options.out, document, results, drawn)
        mark_written(args, report, 0 if document["passed"] else 1)  # complete: a Ctrl-C from here on is no failure
    finally:
        gc.unfreeze()  # in-process callers (tests) get their collector and setting back
    print(summary_table(document, tablefmt="simple"))
    print(f"\nEach layer on its own (fed the reference's inputs):\n{layers_table(document, tablefmt='simple')}")
    print(f"\n{verdict_line(document)}.")
    print(f"Report: {report} (with report.json and the plots), {time.perf_counter() - started:.1f} s")
    return 0 if document["passed"] else 1
