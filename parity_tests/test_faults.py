"""Bad input and faults, by class: each is refused in one line that names the field or argument (exit 2 on the
command line, ValueError in Python), never a traceback, never a silent or false result.

Classes: damaged or hand-edited golden records; sizes that cannot run; outputs that cannot be written (and what a
killed run leaves behind); wrong arguments to the Python API; bad values on the command line and in the
environment; an interrupt once the output is complete.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import reference
import scratch
from parity import atomic
from parity.cli import UsageError, main
from parity.golden.records import DEFAULT_PATH, GoldenComparison, compare_golden, read_golden, seal
from reference import bridge
from scratch import splits
from scratch import train as scratch_train

ROOT = Path(__file__).resolve().parent.parent
FIXED = str(ROOT / "parity" / "check" / "examples" / "fixed_cnn")
SMALL_REPORT = ("--epochs", "1", "--train-size", "20", "--test-size", "10", "--dtypes", "float64", "--no-faithful")
DEAD_PID = 4_194_305  # above Linux's largest pid_max (2**22): no process has it


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `cnn-parity ARGV` in process: (exit code, stdout, stderr); argparse's exits count as codes."""
    try:
        code = main(list(argv))
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(result: tuple[int, str, str], *names: str, code: int = 2) -> str:
    """Exit `code`, one error line on stderr naming every one of `names`, no traceback, no raw errno or temporary."""
    exit_code, out, err = result
    assert exit_code == code, out + err
    assert "Traceback" not in out + err
    line = err.strip().splitlines()[-1]
    assert "error: " in line and (code != 2 or len(err.strip().splitlines()) == 1 or "usage:" in err), err
    for name in names:
        assert name in line, f"{name!r} not named in: {line}"
    assert "[Errno" not in line and ".partial" not in line and ".probe" not in line and ".tmp" not in line
    return line


# --- golden records -------------------------------------------------------------------------------------------


def _shipped() -> dict:
    return json.loads(gzip.decompress(DEFAULT_PATH.read_bytes()))


def _set(path: tuple, value):
    def edit(document):
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def _delete(path: tuple):
    def edit(document):
        target = document
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return edit


def _move_checkpoint_out_of_the_run(document):  # the case: "5 of 5 checkpoints bit-exact"
    document["checkpoints"][1]["step"] = 99_999
    document["checkpoints"][1]["digests"]["conv1.filters"] = "0" * 64


def _swap_checkpoints(document):
    checkpoints = document["checkpoints"]
    checkpoints[2], checkpoints[3] = checkpoints[3], checkpoints[2]


def _drop_checkpoint(document):
    del document["checkpoints"][5]


# (edit, the field the refusal must name). Each edited record is sealed again (its checksums made anew, as a
# hand-edit that recomputed them, or a faulty writer, would leave it): the field checks, not the checksum, refuse it.
GOLDEN_FAULTS = {
    "epochs -5": (_set(("config", "epochs"), -5), "config.epochs"),
    "dtype float16": (_set(("config", "dtype"), "float16"), "config.dtype"),
    "seed 'abc'": (_set(("config", "seed"), "abc"), "config.seed"),
    "seed true": (_set(("config", "seed"), True), "config.seed"),
    "lr NaN": (_set(("config", "lr"), float("nan")), "config.lr"),
    "steps 0": (_set(("config", "steps"), 0), "config.steps"),
    "steps beyond the run": (_set(("config", "steps"), 3001), "config.steps"),
    "batch size 2.0": (_set(("config", "batch_size"), 2.0), "config.batch_size"),
    "tie policy 'last'": (_set(("config", "tie_policy"), "last"), "config.tie_policy"),
    "arch dense9": (_set(("config", "arch"), "conv3x8,pool2,dense9"), "config.arch"),
    "config missing every": (_delete(("config", "every")), "config.every"),
    "config unknown field": (_set(("config", "momentum"), 0.9), "config.momentum"),
    "string loss": (_set(("loss", 17), "abc"), "loss[17]"),
    "null loss": (_set(("loss", 3), None), "loss[3]"),
    "losses cut short": (_delete(("loss", 5)), "loss"),
    "correct 5 of a batch of 1": (_set(("correct", 2), 5), "correct[2]"),
    "checkpoint step out of the run": (_move_checkpoint_out_of_the_run, "checkpoints[1].step"),
    "checkpoints out of order": (_swap_checkpoints, "checkpoints[2].step"),
    "a checkpoint missing": (_drop_checkpoint, "checkpoints[5].step"),
    "digest not hex": (_set(("checkpoints", 0, "digests", "conv1.filters"), "xyz"), "checkpoints[0].digests"),
    "sample 'abc'": (_set(("checkpoints", 4, "samples", "loss", 0), "abc"), "checkpoints[4].samples.loss[0]"),
    "sample index outside its tensor": (_set(("sample_indices", "conv1.out", 0), 10**6), "sample_indices.conv1.out"),
    "sample index -1": (_set(("sample_indices", "loss", 0), -1), "sample_indices.loss[0]"),
    "data shape 2-D": (_set(("data", "shape"), [1000, 28]), "data.shape"),
    "data images not n_train": (_set(("data", "shape", 0), 999), "data.shape[0]"),
    "fingerprint a number": (_set(("data", "train_sha256"), 123), "data.train_sha256"),
    "environment a list": (_set(("environment",), ["numpy"]), "environment"),
    "unknown section": (_set(("extra",), 1), "extra"),
}


@pytest.mark.parametrize("case", GOLDEN_FAULTS, ids=list(GOLDEN_FAULTS))
def test_a_damaged_golden_record_is_refused_naming_the_field(capsys, tmp_path, case):
    edit, field = GOLDEN_FAULTS[case]
    document = _shipped()
    edit(document)
    path = tmp_path / "edited.json.gz"
    path.write_bytes(gzip.compress(json.dumps(seal(document)).encode()))
    line = assert_refused(cli(capsys, "compare-golden", str(path)), field, "damaged or hand-edited")
    assert "MATCHES" not in line


@pytest.mark.parametrize(
    ("edit", "section"),
    [(_set(("loss", 5), 2.3), "loss"), (_set(("config", "lr"), 0.006), "config")],
    ids=["a loss changed", "the lr changed"],
)
def test_a_hand_edit_that_keeps_every_type_is_caught_by_its_section_checksum(capsys, tmp_path, edit, section):
    document = _shipped()
    edit(document)
    path = tmp_path / "edited.json.gz"
    path.write_bytes(gzip.compress(json.dumps(document).encode()))  # the checksums left as recorded
    assert_refused(cli(capsys, "compare-golden", str(path)), f"{section}: its content does not match its checksum")


def test_a_record_without_checksums_is_refused(capsys, tmp_path):
    document = _shipped()
    document["format"] = "cnn-parity-golden/2"
    del document["sha256"]
    path = tmp_path / "old.json.gz"
    path.write_bytes(gzip.compress(json.dumps(document).encode()))
    assert_refused(cli(capsys, "compare-golden", str(path)), "cnn-parity-golden/2", "no checksums", "re-record")


@pytest.mark.parametrize(
    "content", [b"", b"[1, 2]", b'{"format": 3}'], ids=["empty file", "a JSON list", "format a number"]
)
def test_a_file_that_is_no_golden_record_is_refused(capsys, tmp_path, content):
    path = tmp_path / "not.json.gz"
    path.write_bytes(content)
    assert_refused(cli(capsys, "compare-golden", str(path)), str(path))


@pytest.mark.parametrize("special", ["fifo", "device"])
def test_a_golden_record_that_is_no_regular_file_is_refused_without_reading_it(capsys, tmp_path, special):
    """A FIFO would block the read for good, /dev/zero never end it: both are refused before any byte is read."""
    path = Path("/dev/zero") if special == "device" else tmp_path / "record.json.gz"
    if special == "fifo":
        os.mkfifo(path)
    assert main(["compare-golden", str(path)]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_a_small_file_that_unpacks_past_any_golden_record_is_refused_unpacked_no_further(capsys, tmp_path):
    """A gzip bomb: 10 MB of zeros packs into 10 KB. With the cap lowered to 1 MB here, the reader stops one byte past
    it (a real record is ~120 KB unpacked; the cap is 256 MB)."""
    from parity.golden import records

    path = tmp_path / "bomb.json.gz"
    path.write_bytes(gzip.compress(b"0" * 10_000_000))
    unpacked, gunzip = [], records._gunzip

    def counted_gunzip(raw: bytes) -> bytes:
        unpacked.append(len(gunzip(raw)))
        return gunzip(raw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(records, "MAX_RECORD_BYTES", 1_000_000)
        patch.setattr(records, "_gunzip", counted_gunzip)
        assert_refused(cli(capsys, "compare-golden", str(path)), str(path), "unpacks to more than 1,000,000 bytes")
    assert unpacked == [1_000_001]


def test_a_reader_that_goes_away_is_no_usage_error():
    """`cnn-parity selftest --list | head -1`: the reader left; exit 1, not 2 (bad usage), and no traceback,
    with stdout buffered (written at the end) or not."""
    for unbuffered in ("", "1"):
        environment = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
        assert run_with_reader_gone(environment | ({"PYTHONUNBUFFERED": "1"} if unbuffered else {})) == (1, b"")


def run_with_reader_gone(environment: dict[str, str]) -> tuple[int, bytes]:
    """`cnn-parity selftest --list` with stdout a pipe whose reader has left: (exit code, stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from parity.cli.entry import console; sys.exit(console())", "selftest"]
        + ["--list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment,
    )
    process.stdout.close()  # the reader leaves before the first line
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def test_running_out_of_memory_is_one_line_naming_what_to_shrink(capsys, monkeypatch):
    """A spec and batch far larger than the machine (`--arch conv3x70000,... --batch-size 64`): no traceback."""

    def too_large(*args, **kwargs):
        raise MemoryError("Unable to allocate 22.6 GiB")

    monkeypatch.setattr("parity.golden.command.run_record", too_large)
    assert main(["record", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnn-parity record: error: out of memory") and "--batch-size" in err and err.count("\n") == 1


def test_no_match_is_reported_over_zero_steps_or_fewer_than_recorded(monkeypatch):
    import parity.golden.records as records

    assert not GoldenComparison().passed  # a comparison that ran no step is no match
    document = read_golden(DEFAULT_PATH)
    train, _ = splits.load_experiment_data()
    real = records.scratch_steps

    def ten_steps(*args):  # data that run out early
        for step, trace, net in real(*args):
            if step == 10:
                return
            yield step, trace, net

    monkeypatch.setattr(records, "scratch_steps", ten_steps)
    with pytest.raises(UsageError, match="the data give only 10 of the golden record's 3000 steps"):
        compare_golden(document, train.images, train.labels)


def test_a_record_whose_last_checkpoint_is_a_short_batch_round_trips(capsys, tmp_path):
    """1,000 digits in batches of 3: the last batch holds one image, and the last step is always a checkpoint
    (its samples of batched tensors are taken in the first image; this was an IndexError)."""
    path = tmp_path / "batches.json.gz"
    code, out, err = cli(capsys, "record", "--out", str(path), "--epochs", "1", "--batch-size", "3")
    assert code == 0 and "Traceback" not in err
    code, out, _ = cli(capsys, "compare-golden", str(path))
    assert code == 0 and "MATCHES the golden record over 334 steps" in out


# --- sizes that cannot run ------------------------------------------------------------------------------------

TOO_LONG = {
    "report --epochs": (("report", "--epochs", "100000000", "--out", "{tmp}/r"), "epochs 100,000,000"),
    "check --steps": (("check", "--impl", FIXED, "--steps", "100000000"), "--steps"),
    "record --epochs": (("record", "--epochs", "100000000", "--out", "{tmp}/g.json.gz"), "--epochs 100000000"),
    "record --steps": (("record", "--steps", "2000000", "--out", "{tmp}/g.json.gz"), "--steps 2000000"),
    "report --arch, a 1 TB layer": (
        ("report", "--arch", "conv3x8,pool2,dense100000000,dense10", "--out", "{tmp}/r"),
        "dense100000000",
    ),
}


@pytest.mark.parametrize("case", TOO_LONG, ids=list(TOO_LONG))
def test_a_size_that_cannot_run_is_refused_at_once(capsys, tmp_path, case):
    argv, named = TOO_LONG[case]
    line = assert_refused(cli(capsys, *(arg.replace("{tmp}", str(tmp_path)) for arg in argv)), named)
    assert "more than" in line
    assert not any(tmp_path.iterdir())  # nothing was written


BATCH_LARGER_THAN_THE_DATA = {
    "report": ("report", "--train-size", "200", "--batch-size", "300", "--out", "{tmp}/r"),
    "record": ("record", "--train-size", "200", "--batch-size", "300", "--out", "{tmp}/g.json.gz"),
}


@pytest.mark.parametrize("command", BATCH_LARGER_THAN_THE_DATA, ids=list(BATCH_LARGER_THAN_THE_DATA))
def test_a_batch_larger_than_the_training_set_is_refused(capsys, tmp_path, command):
    """It would train on batches of all 200 digits while the report or record named 300: refused before any step."""
    argv = (arg.replace("{tmp}", str(tmp_path)) for arg in BATCH_LARGER_THAN_THE_DATA[command])
    line = assert_refused(cli(capsys, *argv), "batch size 300: more than the 200 training digits")
    assert "(batch size 200: one step an epoch)" in line and not any(tmp_path.iterdir())
    assert scratch_train.main(["--train-size", "200", "--batch-size", "300"]) == 2
    assert "batch size 300: more than the 200 training digits" in capsys.readouterr().err


def test_scratch_train_refuses_a_run_beyond_max_steps(capsys):
    assert scratch_train.main(["--epochs", "100000000"]) == 2
    err = capsys.readouterr().err
    assert "epochs 100,000,000" in err and "Traceback" not in err and err.count("\n") == 1


# --- outputs that cannot be written -----------------------------------------------------------------------------


def _read_only(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/x/.out.123.abcdef.probe")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    return "read-only file system"


def _not_permitted(monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "/mnt/x/.out.123.abcdef.probe")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    return "permission denied"


def _full(monkeypatch):
    real = os.statvfs

    class Full:
        def __init__(self, stat):
            self.f_frsize, self.f_bavail = stat.f_frsize, 0

    monkeypatch.setattr(os, "statvfs", lambda path: Full(real(path)))
    return "the file system is full"


def _under_a_file(monkeypatch):
    return "is a file, so nothing can be made under it"


DESTINATION_FAULTS = {"under a file": _under_a_file, "read-only": _read_only, "no permission": _not_permitted}
DESTINATION_FAULTS["full"] = _full
OUTPUT_COMMANDS = {
    "report": (("report", *SMALL_REPORT, "--out"), "report", "parity.lockstep.parallel.run_experiments"),
    "check": (("check", "--impl", FIXED, "--steps", "2", "--out"), "report", "parity.check.command.check_impl"),
    "record": (("record", "--steps", "3", "--out"), "golden.json.gz", "parity.golden.command.record_golden"),
}


@pytest.mark.parametrize("fault", DESTINATION_FAULTS, ids=list(DESTINATION_FAULTS))
@pytest.mark.parametrize("command", OUTPUT_COMMANDS, ids=list(OUTPUT_COMMANDS))
def test_an_output_that_cannot_be_written_is_refused_before_the_run(capsys, tmp_path, monkeypatch, command, fault):
    argv, name, runner = OUTPUT_COMMANDS[command]
    (tmp_path / "afile").write_text("not a directory")
    out = tmp_path / ("afile" if fault == "under a file" else "new") / name

    def trained(*args, **kwargs):
        raise AssertionError("the run started before the output was checked")

    monkeypatch.setattr(runner, trained)
    problem = DESTINATION_FAULTS[fault](monkeypatch)
    assert_refused(cli(capsys, *argv, str(out)), str(out), problem)


@pytest.mark.parametrize("command", ["report", "check"])
def test_a_mount_point_as_out_is_refused_before_the_run(capsys, tmp_path, monkeypatch, command):
    """A report replaces its directory by a rename, which a mount point (a CI volume) refuses: said at once."""
    argv, _, runner = OUTPUT_COMMANDS[command]
    out = tmp_path / "volume"
    out.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == out or real_ismount(path))
    monkeypatch.setattr(runner, lambda *args, **kwargs: pytest.fail("the run started before --out was checked"))
    assert_refused(cli(capsys, *argv, str(out)), str(out), "a mount point", str(out / "report"))


@pytest.mark.parametrize("written", ["absolute", "parent"])
@pytest.mark.parametrize("command", ["report", "check"])
def test_the_working_directory_as_out_is_refused_however_written(capsys, tmp_path, monkeypatch, command, written):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    argv, _, _ = OUTPUT_COMMANDS[command]
    out = str(tmp_path / "here") if written == "absolute" else ".."
    assert_refused(cli(capsys, *argv, out), f"--out {out}: the working directory or one above it", "report")


@pytest.mark.parametrize("command", ["report", "check"])
def test_an_empty_out_is_called_empty(capsys, monkeypatch, command):
    """Not taken for the working directory (`Path("")` is "."), nor for no report at all; nothing runs."""
    argv, _, runner = OUTPUT_COMMANDS[command]
    monkeypatch.setattr(runner, lambda *args, **kwargs: pytest.fail("the run started before --out was checked"))
    assert_refused(cli(capsys, *argv, ""), "--out: empty; pass a new directory")


def test_the_suites_report_option_is_named_in_its_refusals():
    """`pytest --parity-report .` is refused under its own name, not as an --out pytest does not have."""
    from reports.writer import check_destination

    with pytest.raises(OSError, match=r"^--parity-report \.: the working directory"):
        check_destination(".", option="--parity-report")


@pytest.mark.parametrize("command", ["report", "check"])
def test_a_symlink_loop_as_out_is_one_line(capsys, tmp_path, command):
    argv, _, _ = OUTPUT_COMMANDS[command]
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert_refused(cli(capsys, *argv, str(loop)), str(loop), "is a symbolic link")


@pytest.mark.parametrize("command", ["report", "check"])
def test_a_symlink_to_a_previous_report_as_out_is_refused_as_a_link(capsys, tmp_path, command):
    """Not as something that "is not a directory": it leads to one, but replacing it would replace the link."""
    argv, _, _ = OUTPUT_COMMANDS[command]
    target = tmp_path / "previous"
    target.mkdir()
    (target / "report.json").write_text('{"schema": "cnn-parity/report/v3", "runs": []}')
    link = tmp_path / "link"
    link.symlink_to(target)
    assert_refused(cli(capsys, *argv, str(link)), str(link), f"is a symbolic link (to {target})")
    assert (target / "report.json").exists()


def test_a_write_that_fails_midway_names_the_destination_not_the_temporary(tmp_path):
    out = tmp_path / "latest"
    with pytest.raises(atomic.OutputError) as refused, atomic.directory(out) as staging:
        raise OSError(errno.ENOSPC, "No space left on device", str(staging / "report.json"))
    message = str(refused.value)
    assert message == f"cannot write {out}: no space left on the file system holding {tmp_path}"
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing left behind


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_temporaries_left_by_a_killed_run_are_removed_by_the_next_write(tmp_path, kind):
    name = "latest" if kind == "directory" else "golden.json.gz"
    suffix = ".partial" if kind == "directory" else ".tmp"
    dead = [f".{name}.{DEAD_PID}.abc{suffix}", f".{name}.older-version{suffix}", f".{name}.{DEAD_PID}.d.old"]
    alive = f".{name}.{os.getppid()}.xyz{suffix}"  # a run writing here now
    for entry in [*dead, alive]:
        (tmp_path / entry).mkdir() if entry.endswith((".partial", ".old")) else (tmp_path / entry).write_text("x")
    other = tmp_path / ".unrelated.1.partial"
    other.mkdir()
    if kind == "directory":
        with atomic.directory(tmp_path / name) as staging:
            (staging / "report.md").write_text("done")
    else:
        atomic.write_bytes(tmp_path / name, b"done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive, name, other.name])


def test_an_atomically_written_file_gets_a_plain_files_mode(tmp_path):
    path = atomic.write_bytes(tmp_path / "golden.json.gz", b"x")
    umask = atomic._umask()
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


@pytest.mark.parametrize("command", OUTPUT_COMMANDS, ids=list(OUTPUT_COMMANDS))
def test_an_empty_out_is_refused(capsys, command):
    argv, _, _ = OUTPUT_COMMANDS[command]
    assert_refused(cli(capsys, *argv, ""), "--out")


# --- the Python API ---------------------------------------------------------------------------------------------


def _net():
    return scratch.tutorial_network(0)


API_FAULTS = {
    "build_network(seed=-1)": (lambda: scratch.build_network(seed=-1), "seed"),
    "build_network(seed='abc')": (lambda: scratch.build_network(seed="abc"), "seed"),
    "build_network(image_shape='28x28')": (lambda: scratch.build_network(image_shape="28x28"), "image_shape"),
    "build_network(num_classes=0)": (lambda: scratch.build_network(num_classes=0), "num_classes"),
    "build_network(dtype='float16')": (lambda: scratch.build_network(dtype="float16"), "dtype"),
    "build_network(tie_policy='last')": (lambda: scratch.build_network(tie_policy="last"), "tie_policy"),
    "build_network(a 1 TB dense)": (lambda: scratch.build_network("conv3x8,pool2,dense100000000,dense10"), "dense1"),
    "tutorial_network(num_filters=2.5)": (lambda: scratch.tutorial_network(num_filters=2.5), "num_filters"),
    "to_torch('hello')": (lambda: reference.to_torch("hello"), "net"),
    "load_into_torch('x', {})": (lambda: bridge.load_into_torch("x", {}), "twin"),
    "load_into_torch(twin, 'x')": (lambda: bridge.load_into_torch(reference.to_torch(_net()), "x"), "params"),
    "ReferenceRunner('x')": (lambda: reference.ReferenceRunner("x"), "twin"),
    "ReferenceRunner(lr=-1)": (lambda: reference.ReferenceRunner(reference.to_torch(_net()), lr=-1), "lr"),
    "train_step(lr=nan)": (lambda: _net().train_step(np.zeros((28, 28), np.uint8), 3, float("nan")), "lr"),
    "Layer.update(None)": (lambda: _net().layers[0].update(None), "lr"),
    "epoch_orders(epochs=-5)": (lambda: list(splits.epoch_orders(10, -5, 0)), "epochs"),
    "batches(batch_size=0)": (lambda: list(splits.batches(np.arange(4), 0)), "batch_size"),
    "steps_per_epoch(batch_size=0)": (lambda: splits.steps_per_epoch(10, 0), "batch_size"),
    "run_steps(10**9 epochs)": (lambda: splits.run_steps(10**9, 1000), "epochs"),
}


@pytest.mark.parametrize("case", API_FAULTS, ids=list(API_FAULTS))
def test_a_wrong_api_argument_gets_one_message_naming_it(case):
    call, argument = API_FAULTS[case]
    with pytest.raises((ValueError, TypeError)) as refused:
        call()
    message = str(refused.value)
    assert message.startswith(argument) or f" {argument}" in message or f"'{argument}" in message, message
    assert "expected" in message or "more than" in message or "must be" in message, message
    assert "\n" not in message


# --- values on the command line and in the environment ---------------------------------------------------------


@pytest.mark.parametrize(
    "argv", [["report"], ["check", "--impl", FIXED], ["record"], ["compare-golden", "x.json.gz"], ["selftest"]]
)
def test_an_unknown_option_is_refused_with_its_commands_usage(capsys, argv):
    """The command's own usage, which lists the options it does have, not the top-level one; nothing runs."""
    command = argv[0]
    code, out, err = cli(capsys, *argv, "--bogus")
    line = assert_refused((code, out, err), "unrecognized arguments: --bogus")
    assert err.startswith(f"usage: cnn-parity {command} ") and line.startswith(f"cnn-parity {command}: error:")


@pytest.mark.parametrize("argv", [["--bogus"], ["--bogus", "check"], ["--bogus", "report", "--epochs", "1"]])
def test_an_unknown_option_before_the_command_is_named(capsys, argv):
    """Not the argument argparse would find missing first (COMMAND, --impl): the option that is wrong; nothing runs."""
    line = assert_refused(cli(capsys, *argv), "unrecognized arguments: --bogus", "cnn-parity COMMAND [options]")
    assert line.startswith("cnn-parity: error:")


@pytest.mark.parametrize(
    ("argv", "typo"),
    [
        (["report", "--strid", "1"], "--strid"),
        (["check", "--impl", FIXED, "--step", "3"], "--step"),
        (["selftest", "--step", "3"], "--step"),
        (["--he"], "--he"),
    ],
)
def test_an_abbreviated_option_is_refused_not_taken_for_the_option_it_begins(capsys, argv, typo):
    """argparse would run `--strid 1` as `--stride 1`: a typo must never quietly become another option."""
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == "" and f"unrecognized arguments: {typo}" in err, err


@pytest.mark.parametrize("option", ["-h", "--help"])
def test_help_before_any_command_prints_the_commands(capsys, option):
    code, out, err = cli(capsys, option)
    assert code == 0 and err == "" and out.startswith("usage: cnn-parity ") and "selftest" in out


def test_check_refuses_an_lr_too_small_to_recover_gradients_from(capsys):
    """Gradients come from the user's update, (before - after) / lr: at lr 1e-6 correct code was reported diverged
    at float32 rounding level. Such an lr is refused before anything runs; 1e-3 still passes."""
    line = assert_refused(cli(capsys, "check", "--impl", FIXED, "--lr", "1e-6", "--steps", "3"), "--lr", "1e-6")
    assert "below 0.001" in line and "pass 0.001 or more" in line
    code, out, _ = cli(capsys, "check", "--impl", FIXED, "--lr", "0.001", "--steps", "3", "--no-probes")
    assert code == 0 and "Main run: PARITY over 3 steps" in out and "~6e-14 here" in out


def test_check_at_lr_1e300_says_so_without_a_traceback(capsys):
    """Both sides overflow float64: the check fails (exit 1) with the first non-finite tensor, and does not crash."""
    code, out, err = cli(capsys, "check", "--impl", FIXED, "--lr", "1e300", "--steps", "3", "--no-probes")
    assert code == 1 and "Traceback" not in out + err
    assert "lr 1e+300" in out and "DIVERGENCE" in out.splitlines()[-1]


def test_scratch_train_stops_at_a_non_finite_loss(capsys):
    code = scratch_train.main(["--lr", "1e300", "--epochs", "1", "--train-size", "10", "--test-size", "10"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "Warning" not in err
    assert err.strip().splitlines() == [err.strip()] and "--lr" in err and "lr 1e+300" in err


@pytest.mark.parametrize("content", ["", '{"schema": "cnn-parity/report/v3"}'], ids=["not JSON", "damaged"])
def test_rendering_a_bad_report_json_is_one_line(capsys, tmp_path, content):
    from reports import markdown

    path = tmp_path / "report.json"
    path.write_text(content)
    assert markdown.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("nan", "NaN is not a JSON value"),
        ("device", "a device, not a file"),
        ("oversized", "larger than 10 bytes, which no report.json is"),
    ],
)
def test_a_report_json_that_is_no_strict_json_or_no_file_is_refused_without_reading_it_all(
    capsys, tmp_path, monkeypatch, source, said
):
    """NaN is Python's JSON, not report.json's; /dev/zero would be read until memory ran out."""
    from reports import markdown

    path = tmp_path / "report.json"
    path.write_text('{"schema": "cnn-parity/report/v3", "passed": NaN}')
    if source == "device":
        path = Path("/dev/zero")
    if source == "oversized":
        monkeypatch.setattr(markdown, "MAX_REPORT_BYTES", 10)
    assert markdown.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and said in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("dtypes", ["float64", "float64,float32"], ids=["one run", "two runs in two workers"])
def test_a_bogus_mplbackend_falls_back_to_agg_and_says_so_once(tmp_path, dtypes):
    """matplotlib raises at import on an unknown MPLBACKEND; the report draws with Agg anyway (a new process: this
    one imported matplotlib long ago). One note, also when the plots are drawn by two workers."""
    out = tmp_path / "r"
    argv = ["report", *SMALL_REPORT, "--dtypes", dtypes, "--jobs", "2", "--out", str(out)]
    script = f"import sys; from parity.cli import main; sys.exit(main({argv!r}))"
    env = {**os.environ, "MPLBACKEND": "bogus"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("MPLBACKEND='bogus' is not a matplotlib backend") == 1, done.stderr
    assert "file backend Agg" in done.stderr and len(list(out.glob("*.png"))) == 2 * len(dtypes.split(","))


# --- an interrupt once the output is complete -------------------------------------------------------------------


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_a_ctrl_c_after_the_report_is_written_exits_with_the_runs_code(capsys, tmp_path, monkeypatch):
    import reports.summary

    monkeypatch.setattr(reports.summary, "summary_table", _interrupt)  # the first thing after the report is written
    out = tmp_path / "r"
    code, _, err = cli(capsys, "report", *SMALL_REPORT, "--out", str(out))
    assert code == 0 and (out / "report.md").is_file()
    assert err.strip() == f"cnn-parity report: interrupted after {out / 'report.md'} was completely written"


def test_a_ctrl_c_after_the_golden_record_is_written_exits_0(capsys, tmp_path, monkeypatch):
    import parity.golden.command

    monkeypatch.setattr(parity.golden.command, "batch_of", _interrupt)  # used for its summary, after the write
    path = tmp_path / "g.json.gz"
    code, _, err = cli(capsys, "record", "--steps", "5", "--out", str(path))
    assert code == 0 and read_golden(path)["config"].steps == 5 and "completely written" in err


def test_a_ctrl_c_before_the_report_is_written_exits_130_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("parity.lockstep.parallel.run_experiments", _interrupt)
    out = tmp_path / "r"
    code, _, err = cli(capsys, "report", *SMALL_REPORT, "--out", str(out))
    assert code == 130 and not out.exists() and "nothing was written" in err


def test_a_ctrl_c_while_a_command_starts_is_one_line_not_a_traceback():
    """The console script's first import loads no NumPy, so a Ctrl-C while the command's modules load (a quarter of
    a second, NumPy's import among them) meets the console's handler: one line, exit 130."""
    script = (
        "import sys\n"
        "from parity.cli import entry\n"
        "assert not [name for name in ('numpy', 'scratch', 'torch') if name in sys.modules], 'loaded at once'\n"
        "def interrupted(name, *args):\n"
        "    raise KeyboardInterrupt  # as a Ctrl-C while the report command's module loads\n"
        "entry.importlib.import_module = interrupted\n"
        "sys.argv = ['cnn-parity', 'report']\n"
        "sys.exit(entry.console())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert (done.returncode, done.stdout) == (130, ""), done.stderr
    assert done.stderr == "cnn-parity: interrupted before the report command started; nothing was written\n"


def test_the_packages_names_load_on_first_use():
    """`parity` and `parity.cli` name their exports without importing them: each resolves, and nothing else does."""
    import parity.cli

    for package in (parity, parity.cli):
        assert sorted(package.__all__) == sorted(package._HOMES)
        for name in package.__all__:
            assert getattr(package, name) is getattr(sys.modules[package._HOMES[name]], name)
        with pytest.raises(AttributeError, match="no attribute 'compare_all'"):
            package.compare_all  # noqa: B018 (the lookup is the test)


def test_the_fork_server_loads_with_ctrl_c_ignored(tmp_path, path_env):
    """The workers' fork server imports torch in a process of its own for a second or more; a Ctrl-C (to the whole
    process group, from a terminal) once raised KeyboardInterrupt there too, and its traceback buried the command's
    one line ('interrupted; nothing was written'). It starts with SIGINT ignored, as the workers forked from it."""
    seen = tmp_path / "seen"
    probe = (  # what the server's SIGINT handler is while it imports, written whole (a rename) for the caller to see
        "import os, signal\n\n"
        f"open({str(seen)!r} + '.partial', 'w').write(str(signal.getsignal(signal.SIGINT)))\n"
        f"os.replace({str(seen)!r} + '.partial', {str(seen)!r})\n"
    )
    (tmp_path / "sigint_probe.py").write_text(probe)
    script = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's, whatever the test run inherited\n"
        "from parity.lockstep import parallel\n"
        "parallel.start_fork_server('sigint_probe')\n"
        "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the caller's own, put back\n"
        "deadline = time.monotonic() + 30\n"
        f"while not os.path.exists({str(seen)!r}) and time.monotonic() < deadline:  # the server imports the probe\n"
        "    time.sleep(0.02)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, cwd=ROOT, env=path_env)
    assert seen.read_text() == str(signal.SIG_IGN)


DATA_DIR_COMMANDS = {
    "report": ["report"],
    "check": ["check", "--impl", "parity/check/examples/fixed_cnn"],
    "selftest": ["selftest"],
    "record": ["record"],
    "compare-golden": ["compare-golden", "parity/golden/tutorial-float64-seed0.json.gz"],
}


@pytest.mark.parametrize("missing", [True, False], ids=["missing", "a file"])
@pytest.mark.parametrize("command", DATA_DIR_COMMANDS, ids=list(DATA_DIR_COMMANDS))
def test_a_data_dir_that_is_no_folder_is_refused_in_the_same_words_by_every_command(capsys, tmp_path, command, missing):
    where = tmp_path / "nowhere"
    if not missing:
        where.write_text("not a folder")
    what = "does not exist" if missing else "is not a directory"
    argv = [*DATA_DIR_COMMANDS[command], "--data-dir", str(where)]
    assert_refused(cli(capsys, *argv), f"data directory {where} {what}. Pass the folder holding the MNIST IDX files.")


@pytest.mark.parametrize("command", DATA_DIR_COMMANDS, ids=list(DATA_DIR_COMMANDS))
def test_an_empty_data_dir_is_refused_not_read_as_the_working_directory(capsys, command):
    argv = [*DATA_DIR_COMMANDS[command], "--data-dir", ""]
    assert_refused(cli(capsys, *argv), "data directory: empty. Pass the folder holding the MNIST IDX files.")
