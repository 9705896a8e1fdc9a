"""What recording and comparing cost: `python -m reports.benchmark [--repeats N] [--train-size N] [--epochs N]`.

For each parity dtype it times, on the tutorial experiment's training steps (same data, same seeded orders):

- bare scratch: `Network.train_step` per image (what `python -m scratch.train` does);
- bare PyTorch: the twin trained the ordinary way (`zero_grad`, `cross_entropy`, `backward`, `SGD.step`);
- lockstep: both sides stepped together by `parity.lockstep.run_lockstep`, every tensor handed over and compared.

and prints overhead = lockstep / (bare scratch + bare PyTorch) - 1, the cost that recording and comparing add to
training both models bare (issue #4 asks for at most 30%). Each figure is the fastest of `--repeats` runs, the
usual way to time on a noisy machine. torch runs single-threaded, as in `cnn-parity report`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from tabulate import tabulate


def _fastest(repeats: int, once: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - started)
    return best


def measure(dtype: str, train, epochs: int, repeats: int, stride: int = 1) -> dict[str, float]:
    """Seconds for bare scratch, bare PyTorch and the lockstep run of `epochs` over `train`, in `dtype`."""
    import torch
    import torch.nn.functional as F

    import reference
    from parity.experiment import ExperimentConfig, build_sides, epoch_orders
    from parity.lockstep import run_lockstep

    config = ExperimentConfig(dtype=dtype, epochs=epochs, stride=stride)
    orders = epoch_orders(len(train), epochs, config.seed)
    image_shape = train.images.shape[1:]
    labels = [int(label) for label in train.labels]

    def bare_scratch() -> None:
        side, _ = build_sides(config, image_shape)
        for order in orders:
            for index in order:
                side.net.train_step(train.images[index], labels[index], config.lr)

    def bare_reference() -> None:
        _, runner = build_sides(config, image_shape)
        twin, optimizer = runner.twin, torch.optim.SGD(runner.twin.parameters(), lr=config.lr)
        for order in orders:
            for index in order:
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(twin(runner.image_tensor(train.images[index])), torch.tensor([labels[index]]))
                loss.backward()
                optimizer.step()

    def lockstep() -> None:
        scratch_side, reference_side = build_sides(config, image_shape)
        for order in orders:
            run_lockstep(
                scratch_side,
                reference_side,
                train.images[order],
                train.labels[order],
                dtype,
                lr=config.lr,
                stride=stride,
            )

    del reference  # imported for its side effect of failing early when torch is unusable
    seconds = {
        "bare scratch": _fastest(repeats, bare_scratch),
        "bare PyTorch": _fastest(repeats, bare_reference),
        "lockstep": _fastest(repeats, lockstep),
    }
    bare = seconds["bare scratch"] + seconds["bare PyTorch"]
    seconds["overhead %"] = 100 * (seconds["lockstep"] / bare - 1)
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    """Time bare training and lockstep runs; print a table."""
    parser = argparse.ArgumentParser(prog="python -m reports.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the fastest counts (3)")
    parser.add_argument("--train-size", type=int, default=1000, help="training digits (1000)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (3)")
    parser.add_argument("--stride", type=int, default=1, help="compare every tensor every K steps (1)")
    parser.add_argument("--dtypes", default="float64,float32", help="dtypes (float64,float32)")
    args = parser.parse_args(argv)
    if min(args.repeats, args.train_size, args.epochs, args.stride) < 1:
        parser.error("--repeats, --train-size, --epochs and --stride must be positive")

    import torch

    from scratch.data import load_experiment_data

    torch.set_num_threads(1)
    train, _ = load_experiment_data(n_train=args.train_size, n_test=1)
    steps = args.train_size * args.epochs
    rows = []
    for dtype in args.dtypes.split(","):
        seconds = measure(dtype.strip(), train, args.epochs, args.repeats, args.stride)
        rows.append({"dtype": dtype, "steps": steps, **seconds})
    print(tabulate(rows, headers="keys", floatfmt=".2f"))
    print(
        "\noverhead %: what recording and comparing every tensor add to training both models bare "
        f"(fastest of {args.repeats}; target <= 30%)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
