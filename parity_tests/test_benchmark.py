"""`python -m parity.benchmark` runs every section end to end (one tiny round: a smoke test, no timing asserted)."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import numpy as np
import pytest

import scratch
from parity.benchmark import lockstep, run
from parity.benchmark.run import LR, layers_alone_step, main
from parity.benchmark.timing import Target, format_rows, rows_against
from scratch.splits import load_experiment_data


def test_every_section_runs_and_prints_its_targets():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--steps", "2", "--repeats", "1"]) == 0
    text = out.getvalue()
    for heading in ("== train_step", "== lockstep", "== deep spec"):
        assert heading in text
    assert "lockstep, stride 1" in text and "<= 1.3x" in text  # #13's target row is printed, met or not
    assert "PyTorch eager / scratch layers alone (no network code): " in text
    assert "stride 1, both sides recording every tensor, nothing compared: " in text  # item 1's floor, paired


def test_bad_usage_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's convention
        main(["--steps", "0"])
    assert exit_info.value.code == 2
    assert "--steps" in capsys.readouterr().err


def test_the_layers_alone_do_the_arithmetic_of_train_step():
    """The "layers alone" candidate times the same arithmetic as `train_step`, only without the network's own code:
    after the same steps, its weights are bit for bit those of `train_step`'s."""
    train, _ = load_experiment_data(n_train=20, n_test=1)
    labels = [int(label) for label in train.labels]
    stepped, alone = scratch.tutorial_network(0), scratch.tutorial_network(0)
    step = layers_alone_step(alone, train.images, labels)
    for i in range(2 * len(labels)):  # past the end of the data, as the benchmark's rounds go
        stepped.train_step(train.images[i % len(labels)], labels[i % len(labels)], LR)
        step(i)
    after = alone.parameters()
    for name, array in stepped.parameters().items():
        assert np.array_equal(array, after[name]), name


def test_a_row_says_when_its_target_lies_inside_the_noise():
    """The verdict is the median paired ratio's; `decisive` says whether the middle half of the rounds agrees."""
    baseline = [1.0, 1.0, 1.0, 1.0, 1.0]
    samples = {"base": baseline, "steady": [3.2, 3.3, 3.1, 3.25, 3.4], "noisy": [2.7, 3.1, 2.95, 3.4, 2.9]}
    rows = {row.candidate: row for row in rows_against(samples, "base", dict.fromkeys(("steady", "noisy"), Target(3)))}
    assert rows["steady"].passed and rows["steady"].decisive
    assert rows["steady"].ratio_spread == pytest.approx((3.2, 3.3))
    assert not rows["noisy"].passed and rows["noisy"].decisive is False  # median 2.95, middle half 2.9 - 3.1
    assert rows["base"].decisive is None  # no target
    table = format_rows(list(rows.values()), "base")
    assert "FAIL (within noise)" in table and "2.90 - 3.10x" in table


def test_an_interrupt_says_what_was_printed_and_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "SECTIONS", [("interrupted", interrupted)])
    assert main(["--steps", "1"]) == 130
    assert capsys.readouterr().err == (
        "python -m parity.benchmark: interrupted; the sections printed above are complete\n"
    )


def test_a_reader_that_goes_away_ends_it_quietly():
    """`python -m parity.benchmark | head -1`: exit 1 at the first flush after the reader left, no traceback."""
    process = subprocess.Popen(
        [sys.executable, "-m", "parity.benchmark", "--steps", "1", "--repeats", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # the reader leaves before the first line
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert b"Traceback" not in stderr and b"Exception ignored" not in stderr, stderr.decode()


def test_the_lockstep_section_runs_at_another_batch_size(monkeypatch, capsys):
    """`--batch N` times the lockstep section on mini-batches, and says that the targets are set at batch 1."""
    monkeypatch.setattr(run, "SECTIONS", [("lockstep", run.lockstep_section)])
    assert main(["--steps", "4", "--repeats", "1", "--batch", "4"]) == 0
    text = capsys.readouterr().out
    assert "== lockstep: recording and comparing vs training both models bare, batch size 4 ==" in text
    assert "1 rounds of 1 steps; dtype float64; batch size 4" in text  # --steps over the batch: rounds as long
    assert "the issue's targets are set at batch size 1" in text


@pytest.mark.parametrize("batch", ["0", "5000"])
def test_a_batch_larger_than_the_data_is_refused_before_anything_runs(capsys, batch):
    with pytest.raises(SystemExit) as exit_info:  # argparse's convention
        main(["--steps", "1", "--repeats", "1", "--batch", batch])
    out, err = capsys.readouterr()
    assert (
        exit_info.value.code == 2
        and out == ""
        and err.splitlines()[-1].startswith("python -m parity.benchmark: error: argument --batch: ")
    )
    if batch == "5000":
        assert err.splitlines()[-1].endswith("5000 is more than the lockstep section's 1,000 digits")


@pytest.mark.parametrize("steps, repeats", [("99999999999999999999", "1"), ("5", "99999999999999999999")])
def test_more_steps_than_a_run_may_take_are_refused_before_anything_runs(capsys, steps, repeats):
    with pytest.raises(SystemExit) as exit_info:
        main(["--steps", steps, "--repeats", repeats])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and out == ""
    assert err.splitlines()[-1].startswith("python -m parity.benchmark: error: arguments --steps/--repeats: ")
    assert err.splitlines()[-1].endswith("more than the 1,000,000 a benchmark candidate may take; ask for fewer")


def test_lockstep_inputs_are_one_digit_or_consecutive_batches():
    """Batch 1 steps per sample on (H, W) digits and int labels, as the tutorial; a larger batch takes consecutive
    whole batches and wraps past the last whole one."""
    train, _ = load_experiment_data(n_train=10, n_test=1)
    image, label = lockstep.lockstep_inputs(train.images, train.labels, 1)(13)
    assert image.shape == (28, 28) and type(label) is int and np.array_equal(image, train.images[3])
    inputs = lockstep.lockstep_inputs(train.images, train.labels, 4)
    images, labels = inputs(1)
    assert images.shape == (4, 28, 28) and labels.dtype == np.int64
    assert np.array_equal(images, train.images[4:8]) and np.array_equal(labels, train.labels[4:8])
    assert np.array_equal(inputs(2)[0], train.images[:4])  # 10 digits hold two whole batches of 4
