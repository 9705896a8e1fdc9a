"""`python -m scratch.train`: the tutorial's experiment and output format, option errors, no torch.

NumPy only (torch is never imported here; one test checks that `import scratch` does not import it either).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scratch_helpers import real_digits

import scratch
from scratch import train as train_cli
from scratch.splits import batches, epoch_orders, load_experiment_data

REPO_ROOT = Path(__file__).resolve().parents[1]

INIT_RE = re.compile(r"^MNIST CNN initialized!$")
EPOCH_RE = re.compile(r"^--- Epoch (\d+) ---$")
STEP_RE = re.compile(r"^\[Step (\d+)\] Past 100 steps: Average Loss (\d+\.\d{3}) \| Accuracy: (\d{1,3})%$")
TESTING_RE = re.compile(r"^--- Testing the CNN ---$")
FLOAT = r"(\d+(?:\.\d+)?(?:e-?\d+)?)"
TEST_LOSS_RE = re.compile(rf"^Test Loss: {FLOAT}$")
TEST_ACC_RE = re.compile(rf"^Test Accuracy: {FLOAT}$")

# Lines of the tutorial's published output: the regexes must accept them verbatim.
TUTORIAL_LINES = [
    (INIT_RE, "MNIST CNN initialized!"),
    (EPOCH_RE, "--- Epoch 1 ---"),
    (STEP_RE, "[Step 100] Past 100 steps: Average Loss 2.254 | Accuracy: 18%"),
    (STEP_RE, "[Step 1000] Past 100 steps: Average Loss 0.571 | Accuracy: 83%"),
    (TESTING_RE, "--- Testing the CNN ---"),
    (TEST_LOSS_RE, "Test Loss: 0.5979384893783474"),
    (TEST_ACC_RE, "Test Accuracy: 0.78"),
]


@pytest.mark.parametrize("pattern, line", TUTORIAL_LINES, ids=[line for _, line in TUTORIAL_LINES])
def test_format_regexes_accept_the_tutorial_output(pattern, line):
    assert pattern.match(line)


def parse_output(text: str, epochs: int, train_size: int, batch_size: int = 1) -> dict:
    """Check every line against the tutorial's format, in order; return the parsed numbers."""
    lines = text.splitlines()
    steps = -(-train_size // batch_size)  # a step is one batch; the last may be partial
    steps_per_epoch = list(range(100, steps + 1, 100))
    assert INIT_RE.match(lines[0]), lines[0]
    k = 1
    progress = []
    for epoch in range(1, epochs + 1):
        match = EPOCH_RE.match(lines[k])
        assert match and int(match.group(1)) == epoch, lines[k]
        k += 1
        for step in steps_per_epoch:
            match = STEP_RE.match(lines[k])
            assert match, lines[k]
            assert int(match.group(1)) == step
            progress.append((epoch, step, float(match.group(2)), int(match.group(3))))
            k += 1
    assert TESTING_RE.match(lines[k]), lines[k]
    loss_match, acc_match = TEST_LOSS_RE.match(lines[k + 1]), TEST_ACC_RE.match(lines[k + 2])
    assert loss_match and acc_match, lines[k + 1 : k + 3]
    assert len(lines) == k + 3, f"unexpected trailing lines: {lines[k + 3 :]}"
    return {"progress": progress, "test_loss": float(loss_match.group(1)), "test_accuracy": float(acc_match.group(1))}


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = train_cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


SMALL = ("--train-size", "200", "--test-size", "100", "--epochs", "1")


def test_small_run_prints_the_tutorial_format(capsys):
    code, out, err = run_main(capsys, *SMALL)
    assert code == 0 and err == ""
    parsed = parse_output(out, epochs=1, train_size=200)
    assert [p[1] for p in parsed["progress"]] == [100, 200]
    for _, _, loss, accuracy in parsed["progress"]:
        assert 0 < loss < 10 and 0 <= accuracy <= 100
    assert parsed["test_loss"] > 0
    assert parsed["test_accuracy"] * 100 == pytest.approx(round(parsed["test_accuracy"] * 100))  # k / 100


def test_progress_lines_cover_exactly_the_last_hundred_steps(capsys):
    """[Step N] averages training steps N-99..N of the epoch (1-based), in the seeded shuffle order."""
    code, out, _ = run_main(capsys, "--train-size", "300", "--test-size", "50", "--epochs", "2", "--seed", "5")
    assert code == 0
    parsed = parse_output(out, epochs=2, train_size=300)
    train, _ = load_experiment_data(n_train=300, n_test=50)
    net = scratch.tutorial_network(5)
    expected = []
    for epoch, order in enumerate(epoch_orders(300, 2, 5), start=1):
        assert sorted(order) == list(range(300))
        results = [net.train_step(train.images[i], int(train.labels[i]), 0.005) for i in order]
        for end in (100, 200, 300):
            window = results[end - 100 : end]
            expected.append((epoch, end, round(sum(r[0] for r in window) / 100, 3), sum(r[1] for r in window)))
    assert [(e, s, pytest.approx(l, abs=1e-3), a) for e, s, l, a in parsed["progress"]] == expected
    first, second = epoch_orders(300, 2, 5)
    assert first.tolist() != second.tolist()
    assert train_cli.epoch_orders is epoch_orders  # the one copy of the training orders


def test_batched_progress_lines_average_the_steps_and_count_the_samples(capsys):
    """--batch-size 3: a step is one batch; [Step N] averages the mean losses of steps N-99..N and its accuracy
    counts the samples of those steps; the last partial batch (400 = 133 x 3 + 1) is trained on as it is."""
    argv = ("--train-size", "400", "--test-size", "30", "--epochs", "1", "--seed", "2", "--batch-size", "3")
    code, out, err = run_main(capsys, *argv, "--arch", "conv3x4b,relu,pool2,dense10")
    assert code == 0, err
    parsed = parse_output(out, epochs=1, train_size=400, batch_size=3)
    train, test = load_experiment_data(n_train=400, n_test=30)
    net = scratch.build_network("conv3x4b,relu,pool2,dense10", 2)
    (order,) = epoch_orders(400, 1, 2)
    steps = list(batches(order, 3))
    assert [len(index) for index in steps] == [3] * 133 + [1]
    results = [net.train_step(train.images[index], train.labels[index], 0.005) for index in steps]
    window = results[:100]
    accuracy = 100 * sum(correct for _, correct in window) // 300
    assert parsed["progress"] == [(1, 100, pytest.approx(sum(loss for loss, _ in window) / 100, abs=1e-3), accuracy)]
    expected_loss = np.mean(
        [net.evaluate(image, int(label))[0] for image, label in zip(test.images, test.labels, strict=True)]
    )
    assert parsed["test_loss"] == pytest.approx(expected_loss, rel=1e-12)


@pytest.mark.parametrize(
    "arch, batch_size",
    [("conv3x8,pool2,dense10", "4"), ("conv5x4b,relu,pool2,conv3x6,pool2,dense16,relu,dense10", "2")],
    ids=["tutorial-batch4", "deep-batch2"],
)
def test_arch_and_batch_size_run_and_keep_the_format(capsys, arch, batch_size):
    argv = ("--train-size", "200", "--test-size", "20", "--epochs", "1", "--arch", arch, "--batch-size", batch_size)
    code, out, err = run_main(capsys, *argv)
    assert code == 0 and err == ""
    parsed = parse_output(out, epochs=1, train_size=200, batch_size=int(batch_size))
    assert all(0 < loss < 10 for _, _, loss, _ in parsed["progress"])


def test_batch_size_one_is_the_default_run(capsys):
    """--batch-size 1 and the default spec spelled out: the tutorial's per-sample run, printed identically."""
    _, default, _ = run_main(capsys, *SMALL)
    _, explicit, _ = run_main(capsys, *SMALL, "--batch-size", "1", "--arch", " conv3x8, pool2 ,dense10")
    assert explicit == default


def test_partial_last_window_is_not_reported(capsys):
    """250 training digits: lines at 100 and 200 only, as in the tutorial's loop."""
    code, out, _ = run_main(capsys, "--train-size", "250", "--test-size", "20", "--epochs", "2")
    assert code == 0
    parsed = parse_output(out, epochs=2, train_size=250)
    assert [p[:2] for p in parsed["progress"]] == [(1, 100), (1, 200), (2, 100), (2, 200)]


def test_seed_makes_runs_reproducible_and_distinct(capsys):
    outputs = [run_main(capsys, *SMALL, "--seed", seed)[1] for seed in ("3", "3", "4")]
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


@pytest.mark.parametrize(
    "options",
    [
        ("--dtype", "float32"),
        ("--tie-policy", "all"),
        ("--softmax", "tutorial"),
        ("--tie-policy", "all", "--softmax", "tutorial", "--lr", "0.01"),
    ],
    ids=["float32", "tie-all", "softmax-tutorial", "tutorial-faithful-lr0.01"],
)
def test_options_run_and_keep_the_format(capsys, options):
    code, out, err = run_main(capsys, *SMALL, *options)
    assert code == 0 and err == ""
    parse_output(out, epochs=1, train_size=200)


def test_loops_and_vectorized_print_the_same_run(capsys):
    """The two implementations agree to 1e-12, so the printed experiment is identical."""
    argv = ("--train-size", "100", "--test-size", "20", "--epochs", "1")
    _, vec, _ = run_main(capsys, *argv)
    _, loops, _ = run_main(capsys, *argv, "--impl", "loops")
    assert vec.splitlines()[:-2] == loops.splitlines()[:-2]
    vec_loss = float(TEST_LOSS_RE.match(vec.splitlines()[-2]).group(1))
    loops_loss = float(TEST_LOSS_RE.match(loops.splitlines()[-2]).group(1))
    assert vec_loss == pytest.approx(loops_loss, abs=1e-12)
    assert vec.splitlines()[-1] == loops.splitlines()[-1]


def _write_idx(directory: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    rows, cols = images.shape[1:]
    header = b"\x00\x00\x08\x03" + b"".join(int(n).to_bytes(4, "big") for n in (len(images), rows, cols))
    (directory / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.astype(np.uint8).tobytes())
    header = b"\x00\x00\x08\x01" + len(labels).to_bytes(4, "big")
    (directory / f"{prefix}-labels-idx1-ubyte").write_bytes(header + labels.astype(np.uint8).tobytes())


def test_data_dir_of_idx_files(tmp_path, capsys):
    """--data-dir reads IDX files; a different image size (20x20 crops) builds a matching network."""
    train, test = real_digits()
    _write_idx(tmp_path, "train", train.images[:150, 4:24, 4:24], train.labels[:150])
    _write_idx(tmp_path, "t10k", test.images[:40, 4:24, 4:24], test.labels[:40])
    code, out, err = run_main(
        capsys, "--data-dir", str(tmp_path), "--train-size", "120", "--test-size", "40", "--epochs", "1"
    )
    assert code == 0, err
    parse_output(out, epochs=1, train_size=120)


BAD_OPTIONS = {
    "epochs-zero": (("--epochs", "0"), "--epochs"),
    "epochs-word": (("--epochs", "three"), "--epochs"),
    "epochs-float": (("--epochs", "1.5"), "--epochs"),
    "train-size-negative": (("--train-size", "-5"), "--train-size"),
    "test-size-zero": (("--test-size", "0"), "--test-size"),
    "lr-zero": (("--lr", "0"), "--lr"),
    "lr-negative": (("--lr", "-0.1"), "--lr"),
    "lr-nan": (("--lr", "nan"), "--lr"),
    "lr-inf": (("--lr", "inf"), "--lr"),
    "lr-word": (("--lr", "fast"), "--lr"),
    "seed-negative": (("--seed", "-1"), "--seed"),
    "seed-word": (("--seed", "abc"), "--seed"),
    "dtype-float16": (("--dtype", "float16"), "--dtype"),
    "tie-policy-max": (("--tie-policy", "max"), "--tie-policy"),
    "softmax-fast": (("--softmax", "fast"), "--softmax"),
    "impl-gpu": (("--impl", "gpu"), "--impl"),
    "unknown-option": (("--momentum", "0.9"), "--momentum"),
    "batch-size-zero": (("--batch-size", "0"), "--batch-size"),
    "batch-size-word": (("--batch-size", "many"), "--batch-size"),
    "arch-unknown-item": (("--arch", "conv3x8,pool2,fc10"), "'fc10'"),
    "arch-k0": (("--arch", "conv0x8,pool2,dense10"), "'conv0x8'"),
    "arch-not-ending-in-dense10": (("--arch", "conv3x8,pool2"), "must end in dense10"),
    "arch-empty-item": (("--arch", "conv3x8,,dense10"), "empty item"),
    "arch-shrunk-below-kernel": (("--arch", "conv3x8,pool2,conv14x4,dense10"), "'conv14x4' (input 13x13x8)"),
    "missing-value": (("--epochs",), "--epochs"),
    "too-many-digits": (("--train-size", "4500", "--test-size", "1000"), "--train-size 4500 --test-size 1000: 5,000"),
}


@pytest.mark.parametrize("argv, named", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_bad_options_exit_2_with_one_message(capsys, argv, named):
    code, out, err = run_main(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1, err
    assert named in error_lines[0], err


def test_missing_data_dir_exits_2(tmp_path, capsys):
    code, out, err = run_main(capsys, "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1")
    assert code == 2 and out == ""
    assert (
        err.strip() == f"python -m scratch.train: error: data directory {tmp_path / 'nowhere'} does not exist. "
        "Pass the folder holding the MNIST IDX files."
    )


def test_data_dir_without_idx_files_exits_2(tmp_path, capsys):
    code, _, err = run_main(capsys, "--data-dir", str(tmp_path))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "train-images-idx3-ubyte" in err


def test_help_exits_0(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    for option in (
        "--epochs",
        "--train-size",
        "--test-size",
        "--lr",
        "--seed",
        "--dtype",
        "--data-dir",
        "--tie-policy",
        "--softmax",
        "--impl",
        "--arch",
        "--batch-size",
    ):
        assert option in out


def test_module_entry_point_exit_codes():
    """`python -m scratch.train` itself: exit 2 and one message, no traceback, on a bad option."""
    result = subprocess.run(
        [sys.executable, "-m", "scratch.train", "--lr", "nan"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "python -m scratch.train: error: argument --lr: expected a positive finite number, got 'nan'"
    )


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, a device that is always full")
def test_module_entry_point_says_when_its_output_cannot_be_written():
    """`| head` (the reader goes away): quiet, exit 1; a full disk: one line saying so, exit 1; no tracebacks."""
    command = [sys.executable, "-m", "scratch.train", "--epochs", "1", "--train-size", "20", "--test-size", "20"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT) as early_exit:
        early_exit.stdout.close()  # as `head` does, here before the first line (written after the imports)
        err = early_exit.stderr.read().decode()
    assert early_exit.returncode == 1 and err == ""
    with open("/dev/full", "w") as full:
        result = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, timeout=120)
    assert (result.returncode, result.stderr) == (
        1,
        "python -m scratch.train: error: cannot write the output: No space left on device\n",
    )


def test_module_entry_point_with_arch_and_batch_size():
    """`python -m scratch.train --arch ... --batch-size ...` runs end to end; a bad --arch exits 2 with one line."""
    argv = ["--train-size", "100", "--test-size", "10", "--epochs", "1", "--batch-size", "5"]
    result = subprocess.run(
        [sys.executable, "-m", "scratch.train", *argv, "--arch", "conv3x4,relu,pool2,dense10"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    parse_output(result.stdout, epochs=1, train_size=100, batch_size=5)
    for arch, fragments in (
        ("conv3x8,pool3x,dense10", ("argument --arch: ", "item 2 'pool3x'", "unknown item")),  # when parsed
        ("conv3x8,pool2,conv14x4,dense10", ("item 3 'conv14x4' (input 13x13x8): a 14x14 conv does not fit",)),  # built
    ):
        result = subprocess.run(
            [sys.executable, "-m", "scratch.train", *argv, "--arch", arch],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=120,
        )
        assert result.returncode == 2 and result.stdout == ""
        assert "Traceback" not in result.stderr
        error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(error_lines) == 1 and all(part in error_lines[0] for part in fragments), result.stderr


def test_import_scratch_does_not_import_torch():
    code = (
        "import scratch, scratch.data, scratch.splits, scratch.train, sys; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr


def test_default_experiment_reaches_the_tutorials_accuracy(capsys):
    """The tutorial's experiment with default options: 3 epochs x 1,000 digits, test on 1,000 -> >= 0.78.

    Measured: test accuracy 0.851, test loss 0.4758 (seed 0, float64, vectorised; about 1 s).
    """
    code, out, err = run_main(capsys)
    assert code == 0 and err == ""
    parsed = parse_output(out, epochs=3, train_size=1000)
    assert len(parsed["progress"]) == 30
    assert parsed["test_accuracy"] >= 0.78
    assert parsed["test_loss"] < 1.0
    # It learns: the last window of epoch 3 beats the first window of epoch 1.
    assert parsed["progress"][-1][2] < parsed["progress"][0][2]


def test_a_spec_that_does_not_fit_the_images_names_the_option(capsys):
    code, out, err = run_main(capsys, "--arch", "conv99x8,dense10")
    assert (code, out) == (2, "") and err.startswith("python -m scratch.train: error: argument --arch: network spec")
    assert len(err.strip().splitlines()) == 1


def test_weights_that_overflow_in_the_last_update_are_reported_not_tested_as_nan(capsys):
    """The last step's loss is finite (computed before its update); the test set then meets infinite weights."""
    code, out, err = run_main(capsys, "--epochs", "1", "--train-size", "1", "--test-size", "1", "--lr", "1e300")
    assert code == 1 and "Test Loss" not in out and "RuntimeWarning" not in err
    assert err.strip() == (
        "python -m scratch.train: error: the test loss is nan after training (lr 1e+300): the weights outgrew "
        "float64; try a smaller --lr"
    )
