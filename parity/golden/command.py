"""`cnn-parity record` and `cnn-parity compare-golden`: the options, the runs and the terminal summary."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from parity.cli.errors import EXIT_DIVERGENCE, EXIT_PARITY, UsageError, mark_written
from parity.engine.tolerances import tolerance_for
from parity.golden.records import (
    DEFAULT_EVERY,
    GOLDEN_NAME,
    GoldenComparison,
    GoldenConfig,
    compare_golden,
    data_fingerprint,
    environment,
    is_shipped,
    read_golden,
    record_golden,
    write_golden,
)
from parity.golden.validate import batch_of
from scratch.argtypes import DATA_DIR_HELP, network_spec, nonnegative_int, positive_int
from scratch.data import special_file
from scratch.spec import DEFAULT_SPEC

DEFAULT_OUT = "golden.json.gz"  # in the current directory: the shipped record is never a default destination


def add_record_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `cnn-parity record`."""
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="FILE",
        help=f"the golden file to write (default: {DEFAULT_OUT}, in the current directory; never the shipped record, "
        f"{GOLDEN_NAME})",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=None, help="steps to record (default: all, epochs x train size)"
    )
    parser.add_argument("--epochs", type=positive_int, default=3, help="passes over the training set (3)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="weight init and shuffles (0)")
    parser.add_argument(
        "--every", type=positive_int, default=DEFAULT_EVERY, help=f"steps between checkpoints ({DEFAULT_EVERY})"
    )
    parser.add_argument("--data-dir", default=None, metavar="DIR", help=DATA_DIR_HELP)
    parser.add_argument(
        "--train-size", type=positive_int, default=1000, metavar="N", help="training digits (1000; the record keeps it)"
    )
    parser.add_argument(
        "--arch", type=network_spec, default=DEFAULT_SPEC, help=f"network spec ({DEFAULT_SPEC}, the tutorial's)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=1, help="images per SGD step (1: the tutorial's per-sample SGD)"
    )


def _check_replaceable(path: Path) -> None:
    """Refuse a destination that exists and is not a golden record (a device, a FIFO, any other file): writing
    replaces it with a new file, so only a record is replaced."""
    if special_file(path):
        raise UsageError(f"--out {path}: not a regular file (a device, FIFO or socket); pass a file name")
    if not path.is_file():
        return  # not there yet (or a directory, which check_creatable names)
    try:
        read_golden(path)
    except UsageError:
        raise UsageError(
            f"--out {path}: exists and is not a golden record, and recording would replace it; pass another file "
            "name, or remove it first"
        ) from None


def run_record(args: argparse.Namespace) -> int:
    """Record the default scratch run (or the one the options describe) to a golden file."""
    from parity import atomic
    from scratch.splits import TooFewDigits, check_batch_size, check_steps, load_experiment_data, steps_per_epoch

    if args.steps is not None:
        check_steps(args.steps, f"--steps {args.steps}")
    if not args.out.strip():
        raise UsageError("--out '': pass a file name for the golden record, e.g. golden.json.gz")
    if is_shipped(Path(args.out)):
        raise UsageError(
            f"--out {args.out}: that is the shipped golden record ({GOLDEN_NAME}), the guard that scratch's numbers "
            "stay bit-identical; re-recording it would make the guard pass whatever scratch computes now. Record to "
            "another file (compare-golden compares any record); to replace the shipped one on purpose, copy that "
            "file over it in a commit that says why"
        )
    _check_replaceable(Path(args.out))
    atomic.check_creatable(Path(args.out), "the golden record", directory=False)  # before the run, not after
    try:
        train, _ = load_experiment_data(args.data_dir, n_train=args.train_size, n_test=0)  # nothing tested
    except TooFewDigits as error:
        raise UsageError(error.in_options({"train": "--train-size"})) from None
    check_batch_size(args.batch_size, len(train))
    if args.steps is None:
        per_epoch = steps_per_epoch(len(train), args.batch_size)
        check_steps(args.epochs * per_epoch, f"--epochs {args.epochs} x {per_epoch:,} steps an epoch")
    config = GoldenConfig(
        arch=args.arch, batch_size=args.batch_size, seed=args.seed, epochs=args.epochs, n_train=len(train)
    )
    try:
        config.spec(train.images.shape[1:])
    except ValueError as error:
        raise UsageError(f"--arch: {error}") from None
    total = args.epochs * config.steps_per_epoch
    if args.steps is not None and args.steps > total:
        raise UsageError(
            f"--steps {args.steps}: the run has only {args.epochs} x {config.steps_per_epoch} = {total} steps"
        )
    config = replace(config, steps=args.steps or total, every=args.every)
    started = time.perf_counter()
    document = record_golden(config, train.images, train.labels, train.source)
    seconds = time.perf_counter() - started
    path = write_golden(document, Path(args.out))
    mark_written(args, path, EXIT_PARITY)
    print(
        f"recorded {config.steps} scratch steps ({config.arch}, batch {config.batch_size}, {config.dtype}, "
        f"seed {config.seed}, {config.tie_policy}/{config.softmax}, "
        f"{'the first ' + str(config.steps) + ' of ' if config.steps < total else ''}"
        f"{config.epochs} epochs x {config.n_train}) with {len(document['checkpoints'])} checkpoints in "
        f"{seconds:.1f} s: {path} ({path.stat().st_size / 1024:.1f} KiB)"
    )
    recent = range(max(config.steps - 100, 0), config.steps)
    images = sum(batch_of(step, document["config"]) for step in recent)
    print(
        f"final loss {document['loss'][-1]:.6f}; accuracy over the last {len(recent)} steps "
        f"{100 * sum(document['correct'][recent.start :]) / images:.0f}%"
    )
    return EXIT_PARITY


def add_compare_golden_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `cnn-parity compare-golden`."""
    parser.add_argument("file", metavar="FILE", help="a golden record written by `cnn-parity record`")
    parser.add_argument(
        "--steps", type=positive_int, default=None, help="compare only the first N steps (default: all)"
    )
    parser.add_argument(
        "--data-dir", default=None, metavar="DIR", help=f"{DATA_DIR_HELP}; the data the golden was recorded on"
    )


def run_compare_golden(args: argparse.Namespace) -> int:
    """Rerun scratch alone (NumPy only) and report the first step that departs from the golden record."""
    from scratch.splits import TooFewDigits, load_experiment_data

    document = read_golden(args.file)
    config: GoldenConfig = document["config"]
    if args.steps is not None and args.steps > config.steps:  # as `record` refuses more steps than its run has
        raise UsageError(f"--steps {args.steps}: {args.file} holds only {config.steps} steps; pass at most that")
    try:
        train, _ = load_experiment_data(args.data_dir, n_train=config.n_train, n_test=0)  # nothing tested
    except TooFewDigits as error:
        raise UsageError(
            f"{args.file}: recorded on {config.n_train:,} training digits of {document['data']['source']}; "
            f"{error.available:,} in {error.source}. Pass the --data-dir it was recorded on"
        ) from None
    if data_fingerprint(train.images, train.labels) != document["data"]["train_sha256"]:
        raise UsageError(
            f"{args.file}: recorded on other training data ({document['data']['source']}); "
            f"here: {train.source}. Pass the same --data-dir or re-record"
        )
    started = time.perf_counter()
    result = compare_golden(document, train.images, train.labels, args.steps)
    seconds = time.perf_counter() - started
    print(render_comparison(args.file, document, result, seconds))
    return EXIT_PARITY if result.passed else EXIT_DIVERGENCE


def _steps_matched(run: int, recorded: int) -> str:
    """`3000 steps`, or `its first 10 of 250 steps` when `--steps` asked for fewer than the record holds."""
    return f"{run} steps" if run == recorded else f"its first {run} of {recorded} steps (--steps)"


def render_comparison(path: str, document: dict, result: GoldenComparison, seconds: float) -> str:
    """The terminal summary of a golden comparison."""
    config: GoldenConfig = document["config"]
    env, here = document["environment"], environment()
    tolerance = tolerance_for(config.dtype)
    torch_state = "torch not imported" if sys.modules.get("torch") is None else "torch loaded by the caller, not used"
    same_build = all(env.get(key) == here.get(key) for key in ("numpy", "numpy_blas", "platform"))
    lines = [
        f"cnn-parity compare-golden {path}",
        f"  golden: {config.steps} steps of scratch ({config.arch}, batch {config.batch_size}, {config.dtype}, "
        f"seed {config.seed}, {config.tie_policy}/"
        f"{config.softmax}, {config.impl}, lr {config.lr:g}, {config.epochs} epochs x {config.n_train}), "
        f"checkpoints every {config.every} steps",
        f"  recorded with NumPy {env.get('numpy')} ({env.get('numpy_blas', 'BLAS unknown')}) on {env.get('platform')}"
        + (
            " - the same build as here"
            if same_build
            else f"; here NumPy {here.get('numpy')} ({here.get('numpy_blas', 'BLAS unknown')}) "
            f"on {here.get('platform')}"
        ),
        f"  rerun: scratch alone, NumPy only ({torch_state}); tolerance {tolerance.describe()}",
        "",
    ]
    if result.passed:
        lines += [
            f"loss:    {result.steps_run} of {result.steps_run} steps within tolerance "
            f"(max |error| {result.max_loss_error:.3g})",
            f"samples: {result.checkpoints} checkpoints x {len(document['sample_indices'])} tensors within tolerance "
            f"(max |error| {result.max_sample_error:.3g}; worst {100 * result.worst_share:.2g}% of the allowance)",
            _digest_line(result),
            "",
            f"MATCHES the golden record over {_steps_matched(result.steps_run, config.steps)} (exit 0) "
            f"[{seconds:.1f} s]",
        ]
    else:
        departure = result.departure
        lines += [
            f"first departure: {departure.message(config)}",
            f"  agreed before it: {departure.step} steps (max loss |error| {result.max_loss_error:.3g}); "
            + _digest_line(result),
            "",
            f"DEPARTS from the golden record at step {departure.step} (exit 1) [{seconds:.1f} s]",
        ]
    return "\n".join(lines)


def _digest_line(result: GoldenComparison) -> str:
    if result.first_digest_difference is None:
        return f"digests: {result.bit_exact_checkpoints} of {result.checkpoints} checkpoints bit-exact"
    return (
        f"digests: {result.bit_exact_checkpoints} of {result.checkpoints} checkpoints bit-exact, first difference at "
        f"step {result.first_digest_difference} (values decide, not digests: another BLAS or NumPy build may round "
        "the last bit differently)"
    )
