"""Speed benchmark: the vectorised scratch `train_step` against PyTorch eager and the tutorial's loop code.

Run it (a documented command, not a test; it exits 0 whatever the timings, 2 on bad usage or no data, 130 if
interrupted):

    python -m parity.benchmark [--steps N] [--repeats R] [--batch B] [--dtype float64]

Every candidate is timed in this one process, round-robin: each round times a block of steps of every
candidate in turn (the order rotating from round to round), so a slow spell on a noisy machine hits every
candidate alike. A candidate's time is the median over rounds of its per-step time; its ratio to the vectorised
step is the median over rounds of the two times' ratio within the round, which also cancels slow drifts in the
machine's speed. The middle half of those per-round ratios (first to third quartile) is printed beside it; a verdict
whose target lies inside that range is marked "within noise", since another run may well give the other one.
Candidates train per-sample SGD (lr 0.005) on real MNIST digits, each on its own copy of the tutorial's initial
weights, one thread each:

- scratch vectorised: `scratch.tutorial_network(0, dtype).train_step(image, label, lr)`;
- scratch layers alone: the same network's normalisation, layers and loss called in turn, with no label check, no
  trace and no count of hits (`layers_alone_step`): how much of the step is the network's own code;
- PyTorch eager: the same network bridged to its PyTorch twin, a bare step (normalise, cross-entropy,
  zero_grad, backward, `torch.optim.SGD.step`), with `torch.set_num_threads(1)`;
- tutorial loops: the tutorial's loop code (`impl="loops"`, tie policy "all", softmax "tutorial"), timed over
  `steps // 50` steps per round: it is ~100x slower.

The lockstep section, what recording and comparing add to training both models bare, is described in
`parity.benchmark.lockstep`; `--batch B` times it on mini-batches of B digits, `--steps` // B steps a round.

Targets (from the issue): the vectorised step at least 3x faster than PyTorch eager and at least 100x faster than
the loops, in float64. The ratio column is each candidate's time over the vectorised step's. The deep spec's
section has the target of #13, scratch within 2x of PyTorch eager: PyTorch's time over scratch's at least 0.5.

More sections (further comparisons) can be added: time them with `time_candidates`, turn the times into `Row`s
and print them with `print_section`, then list the section in `SECTIONS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import numpy as np

import scratch
from parity.benchmark import LR
from parity.benchmark.lockstep import TRAIN_DIGITS, lockstep_section
from parity.benchmark.timing import (
    StepFn,
    Target,
    describe_ratio,
    environment_line,
    limit_threads,
    print_section,
    rows_against,
    time_candidates,
)
from parity.cli.errors import silence_stdout
from scratch.argtypes import positive_int
from scratch.splits import MAX_STEPS

DEFAULT_STEPS = 500
DEFAULT_REPEATS = 15
LOOPS_STEP_DIVISOR = 50  # the loop code is ~100x slower: time it over fewer steps per round

VECTORISED = "scratch vectorised"
LAYERS_ALONE = "scratch layers alone (no network code)"
TORCH = "PyTorch eager"
LOOPS = "tutorial loops"


def train_step_candidates(dtype: np.dtype, images: np.ndarray, labels: Sequence[int]) -> dict[str, StepFn]:
    """The three training steps, each on its own network built from the tutorial's initialisation (seed 0)."""
    import torch
    import torch.nn.functional as F

    import scratch
    from reference.bridge import to_torch, torch_dtype

    count = len(images)
    vectorised = scratch.tutorial_network(0, dtype)
    loops = scratch.tutorial_network(0, dtype, impl="loops", tie_policy="all", softmax="tutorial")
    twin = to_torch(scratch.tutorial_network(0, dtype))
    optimizer = torch.optim.SGD(twin.parameters(), lr=LR)
    tdtype = torch_dtype(dtype)
    height, width = images.shape[1:]

    def vectorised_step(i: int) -> None:
        vectorised.train_step(images[i % count], labels[i % count], LR)

    layers_step = layers_alone_step(scratch.tutorial_network(0, dtype), images, labels)

    def loops_step(i: int) -> None:
        loops.train_step(images[i % count], labels[i % count], LR)

    def torch_step(i: int) -> None:
        x = (torch.from_numpy(images[i % count]).to(tdtype) / 255 - 0.5).reshape(1, 1, height, width)
        loss = F.cross_entropy(twin(x), torch.tensor([labels[i % count]]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return {VECTORISED: vectorised_step, LAYERS_ALONE: layers_step, TORCH: torch_step, LOOPS: loops_step}


def layers_alone_step(net: scratch.Network, images: np.ndarray, labels: Sequence[int]) -> StepFn:
    """`net.train_step` less the network's own code: the image normalised (`normalize`, its check included), then
    the layers and loss called in turn, with no label check, no trace and no count of hits. The same arithmetic
    (tested), so its time bounds what a leaner `Network` could gain."""
    label_arrays = [np.array([label]) for label in labels]
    first, *later = net.layers
    count = len(images)

    def step(i: int) -> None:
        out = net.normalize(images[i % count])
        for layer in net.layers:
            out = layer.forward(out)
        net.loss.forward(out, label_arrays[i % count])
        gradient = net.loss.backward()
        for layer in reversed(later):
            gradient = layer.backward(gradient)
        first.parameter_backward(gradient)
        for layer in net.layers:
            layer.update(LR)

    return step


def train_step_section(args: argparse.Namespace) -> None:
    """Section 1: per-sample SGD steps of the three implementations, with the issue's targets."""
    from scratch.splits import load_experiment_data

    train, _ = load_experiment_data()
    labels = [int(label) for label in train.labels]
    candidates = train_step_candidates(np.dtype(args.dtype), train.images, labels)
    steps = {name: args.steps for name in candidates} | {LOOPS: max(1, args.steps // LOOPS_STEP_DIVISOR)}
    samples = time_candidates(candidates, steps, args.repeats)
    rows = rows_against(samples, VECTORISED, {TORCH: Target(at_least=3), LOOPS: Target(at_least=100)})
    notes = [
        f"{args.repeats} rounds of {', '.join(f'{count} steps ({name})' for name, count in steps.items())}; "
        f"dtype {args.dtype}",
        f"data: {train.source}",
        f"{TORCH} / {LAYERS_ALONE}: {describe_ratio(samples[TORCH], samples[LAYERS_ALONE])} (the most that "
        "trimming the network's own code could reach; the rest is the layers' arithmetic)",
    ]
    if args.dtype != "float64":
        notes.append("note: the issue's targets are set for float64")
    print_section("train_step: per-sample SGD, batch size 1", rows, VECTORISED, notes)


DEEP_SPEC = "conv5x16,relu,pool2,conv3x32,relu,pool2,dense10"
DEEP_BATCH = 32
DEEP_SCRATCH = f"scratch vectorised, deep spec, batch {DEEP_BATCH}"
DEEP_TORCH = f"PyTorch eager, deep spec, batch {DEEP_BATCH}"


def deep_candidates(dtype: np.dtype, images: np.ndarray, labels: np.ndarray) -> dict[str, StepFn]:
    """Mini-batch SGD steps of the deep spec, scratch against its PyTorch twin, from the same initial weights."""
    import torch
    import torch.nn.functional as F

    from reference.bridge import to_torch, torch_dtype

    net = scratch.build_network(DEEP_SPEC, 0, dtype)
    twin = to_torch(scratch.build_network(DEEP_SPEC, 0, dtype))
    optimizer = torch.optim.SGD(twin.parameters(), lr=LR)
    tdtype = torch_dtype(dtype)
    batches = len(images) // DEEP_BATCH

    def batch(i: int) -> slice:
        start = (i % batches) * DEEP_BATCH
        return slice(start, start + DEEP_BATCH)

    def scratch_step(i: int) -> None:
        net.train_step(images[batch(i)], labels[batch(i)], LR)

    def torch_step(i: int) -> None:
        x = (torch.from_numpy(images[batch(i)]).to(tdtype) / 255 - 0.5).unsqueeze(1)
        loss = F.cross_entropy(twin(x), torch.from_numpy(labels[batch(i)]).long())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return {DEEP_SCRATCH: scratch_step, DEEP_TORCH: torch_step}


def deep_section(args: argparse.Namespace) -> None:
    """Section 3: the deep spec at batch 32, scratch against PyTorch eager at the same batch."""
    from scratch.splits import load_experiment_data

    train, _ = load_experiment_data()
    candidates = deep_candidates(np.dtype(args.dtype), train.images, train.labels.astype(np.int64))
    steps = max(1, args.steps // 10)  # a batch of 32 through two convs costs ~10 tutorial steps
    samples = time_candidates(candidates, steps, args.repeats, warmup=3)
    rows = rows_against(samples, DEEP_SCRATCH, {DEEP_TORCH: Target(at_least=0.5)})
    notes = [
        f"{args.repeats} rounds of {steps} steps; dtype {args.dtype}; spec {DEEP_SPEC}",
        f"PyTorch eager / scratch: {rows[1].ratio:.2f}x (above 1: scratch is faster)",
        "target: scratch within 2x of PyTorch eager, i.e. PyTorch eager / scratch >= 0.5x",
    ]
    print_section(f"deep spec: mini-batch SGD, batch size {DEEP_BATCH}", rows, DEEP_SCRATCH, notes)


# (title, function) in print order.
SECTIONS: list[tuple[str, Callable[[argparse.Namespace], None]]] = [
    ("train_step", train_step_section),
    ("lockstep", lockstep_section),
    ("deep", deep_section),
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; bad usage exits 2 with a message (argparse's convention)."""
    parser = argparse.ArgumentParser(
        prog="python -m parity.benchmark",
        description=(
            "Time, side by side in one process, three sections: scratch's vectorised train_step against PyTorch "
            "eager and the tutorial's loops; what the lockstep's recording and comparing add to training both models "
            "bare; and the deep spec at batch 32 against PyTorch eager. Medians and paired ratios, with targets."
        ),
        allow_abbrev=False,  # a typo that is a prefix of an option would otherwise run as it
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=DEFAULT_STEPS,
        help=f"timed steps per round (default {DEFAULT_STEPS}; the loops get 1/{LOOPS_STEP_DIVISOR})",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=DEFAULT_REPEATS,
        help=f"round-robin rounds; medians are reported (default {DEFAULT_REPEATS})",
    )
    parser.add_argument(
        "--batch",
        type=positive_int,
        default=1,
        help="batch size of the lockstep section (default 1, per-sample SGD, as the targets are set; "
        "the other sections keep theirs)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="network dtype (default float64; the targets are set for float64)",
    )
    args = parser.parse_args(argv)
    if args.batch > TRAIN_DIGITS:  # before any section runs
        parser.error(f"argument --batch: {args.batch} is more than the lockstep section's {TRAIN_DIGITS:,} digits")
    if args.steps * args.repeats > MAX_STEPS:  # a typo's extra zeros would run for days
        parser.error(
            f"arguments --steps/--repeats: {args.steps:,} steps x {args.repeats:,} round{'s' * (args.repeats > 1)} is "
            f"{args.steps * args.repeats:,} steps a candidate, more than the {MAX_STEPS:,} a benchmark candidate may "
            "take; ask for fewer"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run every section and print its table; 0 whatever the timings (a missed target is reported, not raised).

    2 on bad usage, or when the MNIST digits cannot be loaded (the message says what to install); 130 when
    interrupted; 1 when the reader of its output went away (`| head`)."""
    from scratch.data import DataError

    args = parse_args(argv)
    limiter, thread_note = limit_threads()
    try:
        print(environment_line())
        print(thread_note, flush=True)
        for _, section in SECTIONS:
            section(args)
            sys.stdout.flush()  # each section as it completes, also through a pipe (`| tee`)
    except DataError as error:
        print(f"python -m parity.benchmark: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("python -m parity.benchmark: interrupted; the sections printed above are complete", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): nothing left to print to
        silence_stdout()
        return 1
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
    return 0


if __name__ == "__main__":
    sys.exit(main())
