"""`cnn-parity report`: files, schema, determinism, exit codes, one-line errors, atomic writes, the faithful run.

Runs go through `parity.cli.main` in-process, on small real-MNIST experiments (200 train / 100 test, 1 epoch) so
the whole module takes seconds; the full default run is timed by hand and by `python -m parity.benchmark`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from parity import atomic, cli
from parity.cli.entry import build_parser
from parity.lockstep import parallel
from parity.lockstep.experiment import ExperimentConfig, run_experiment
from reports import command as report_command
from reports import jsondoc, markdown, writer
from reports.suite import write_suite_report
from scratch.spec import DEFAULT_SPEC, parse_spec
from scratch.splits import load_experiment_data

SMALL = ["--train-size", "200", "--test-size", "100", "--epochs", "1"]
ROOT = Path(__file__).resolve().parent.parent
TINY = ["--train-size", "50", "--test-size", "10", "--epochs", "1", "--dtypes", "float64", "--no-faithful"]
# The first line of a script a test interrupts: Ctrl-C raises KeyboardInterrupt, as in a terminal, whatever the test
# run inherited (a job started in the background of a shell, as some CI runners do, starts with SIGINT ignored).
CTRL_C_AS_IN_A_TERMINAL = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
DEEP = "conv3x4,relu,pool2,dense10"  # a ReLU between the conv and the pool: names and shapes the tutorial lacks
RUN_KEYS = {
    "architecture",
    "batch_size",
    "dtype",
    "tie_policy",
    "steps",
    "passed",
    "first_divergence",
    "max_abs_error",
    "percent_of_tolerance",
    "test",
    "seconds",
}


@pytest.fixture
def report_cli(monkeypatch):
    """`cnn-parity` with only the `report` subcommand registered (the others are other modules' business)."""
    monkeypatch.setattr(cli, "COMMANDS", {"report": cli.COMMANDS["report"]})

    def main(*argv: str) -> int:
        return cli.main(["report", *argv])

    return main


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    """The default report (both dtypes + the faithful run) at a small size: (exit code, stdout, out dir)."""
    out = tmp_path_factory.mktemp("small") / "report"
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout):  # capsys is per test
        patch.setattr(cli, "COMMANDS", {"report": cli.COMMANDS["report"]})
        code = cli.main(["report", "--out", str(out), *SMALL])
    return code, stdout.getvalue(), out


def _load(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def _runs(document: dict) -> dict[str, dict]:
    return {run["name"]: run for run in document["runs"]}


# --- files and schema ------------------------------------------------------------------------------------------


def test_writes_markdown_json_and_plots(small_report):
    code, _, out = small_report
    assert code == 0
    document = _load(out)
    names = {path.name for path in out.iterdir()}
    assert {"report.md", "report.json"} <= names
    for run in document["runs"]:
        for png in run["plots"].values():
            assert png in names
            assert (out / png).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary directories left behind"


def test_json_schema(small_report):
    document = _load(small_report[2])
    assert document["schema"] == jsondoc.SCHEMA == "cnn-parity/report/v3"
    assert {"schema", "environment", "runs", "passed", "tolerances"} <= set(document)
    assert {"python", "numpy", "torch", "torch_threads", "git_commit", "numpy_blas"} <= set(document["environment"])
    assert document["environment"]["torch_threads"] == 1
    assert [run["name"] for run in document["runs"]] == [
        "float64 first/stable",
        "float32 first/stable",
        "float64 all/tutorial",
    ]
    for run in document["runs"]:
        assert RUN_KEYS <= set(run)
        assert run["steps"] == 200
        assert set(run["test"]) == {"scratch", "reference"}
        assert set(run["test"]["scratch"]) == {"loss", "accuracy"}
        assert set(run["max_abs_error"]) >= {"conv1.out", "pool1.d_in", "conv1.filters", "loss"}
        assert len(run["progress"]) == 2  # the tutorial's line every 100 steps
        assert set(run["plots"]) == {"loss", "errors"}
    for name in ("float64 first/stable", "float32 first/stable"):
        run = _runs(document)[name]
        assert run["passed"] and run["first_divergence"] is None and run["role"] == "parity claim"


def test_faithful_run_diverges_at_step_0_by_tie_policy_and_does_not_fail(small_report):
    code, stdout, out = small_report
    faithful = _runs(_load(out))["float64 all/tutorial"]
    divergence = faithful["first_divergence"]
    assert code == 0
    assert faithful["role"] == "demonstration" and faithful["verdict"] == "expected divergence"
    assert not faithful["passed"] and not faithful["fails_exit_code"]
    assert {"step", "tensor", "abs_error", "allowed", "diagnosis"} <= set(divergence)
    assert (divergence["step"], divergence["tensor"], divergence["layer"]) == (0, "pool1.d_in", "pool1")
    assert divergence["diagnosis"]["kind"] == "tie_policy"
    assert divergence["abs_error"] > divergence["allowed"]
    # The faithful run's only local failure is the pool's tie policy: its conv and dense pass on their own.
    layers = {layer["name"]: layer for layer in faithful["layers"]}
    assert [(name, layer["passed"]) for name, layer in layers.items()] == [
        ("conv1", True),
        ("pool1", False),
        ("dense1", True),
    ]
    assert (layers["pool1"]["step"], layers["pool1"]["tensor"]) == (0, "pool1.d_in")
    assert layers["pool1"]["diagnosis"]["kind"] == "tie_policy"
    assert {layers["conv1"]["origin"], layers["dense1"]["origin"]} == {"propagated"}
    assert "expected divergence" in stdout
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "Why the tutorial's own code departs from PyTorch" in markdown
    assert "does not fail the verdict or the exit code" in markdown


def test_markdown_holds_the_tables(small_report):
    markdown = (small_report[2] / "report.md").read_text(encoding="utf-8")
    assert markdown.startswith("# ") and "**Verdict - PASS" in markdown
    for heading in (
        "## Summary",
        "## Architecture",
        "## What each run is",
        "## Tolerances",
        "## Environment",
        "### First step (step 0)",
        "### Worst step",
        "### Progress: the tutorial's lines, both sides",
        "### Test",
        "### Time",
    ):
        assert heading in markdown, heading
    # The engine's per-tensor rows, as a GitHub table, with the pipe in "max |Δ|" escaped.
    assert "| tensor " in markdown and "max \\|Δ\\|" in markdown and "| pool1.d_in " in markdown
    assert "| float64 | 1e-12 " in markdown  # the tolerance table
    assert "| conv1   | conv3x8     | 26x26x8        |" in markdown  # the architecture, with each layer's output
    assert "| max % of tol " in markdown  # the share of its allowance each tensor used
    assert "![training loss, both sides](loss-float64-first-stable.png)" in markdown
    # Every table is well formed: each of its lines has as many (unescaped) column separators as its header.
    tables, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables, current = tables + [current], []
    assert len(tables) >= 3 * 6
    for lines in tables:
        separators = {len(re.findall(r"(?<!\\)\|", line)) for line in lines}
        assert len(separators) == 1, lines


def test_terminal_summary(small_report):
    _, stdout, out = small_report
    assert "float64 first/stable" in stdout and "first divergence" in stdout
    assert "PASS: both parity claims hold" in stdout
    assert str(out / "report.md") in stdout


def test_markdown_renders_from_the_json_alone(small_report):
    out = small_report[2]
    assert markdown.render_file(out / "report.json") == (out / "report.md").read_text(encoding="utf-8")
    assert markdown.main([str(out / "report.json")]) == 0


def test_markdown_refuses_json_nested_too_deep_to_read(tmp_path, capsys):
    deep = tmp_path / "report.json"
    deep.write_text("[" * 5000 + "]" * 5000)  # json.loads recurses once per level
    assert markdown.main([str(deep)]) == 2
    err = capsys.readouterr().err
    assert "not a report.json (its JSON is nested too deep to read)" in err and "Traceback" not in err


def test_markdown_refuses_another_schema(tmp_path, capsys):
    old = tmp_path / "report.json"
    old.write_text(json.dumps({"schema": "cnn-parity/report/v1", "runs": []}))
    with pytest.raises(ValueError, match="not a report.json of schema 'cnn-parity/report/v3'"):
        markdown.render_file(old)
    assert markdown.main([str(old)]) == 2
    assert "schema 'cnn-parity/report/v1'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("damage", "field"),
    [
        (lambda document: document["runs"][0].update(passed="false"), "runs[0].passed"),
        (lambda document: document["runs"][0].update(passed=False), "runs[0].verdict"),
        (lambda document: document.pop("passed"), "passed"),
        (lambda document: document.update(passed=1), "passed"),
        (lambda document: document.update(claims=5), "claims"),
        (lambda document: document["runs"][1].update(role="claim"), "runs[1].role"),
        (lambda document: document["runs"][0].update(unreproduced_failures=[3]), "runs[0].passed"),
        (lambda document: document["runs"][0]["layers"][0].update(passed=False), "runs[0].passed"),
    ],
    ids=[
        "string-verdict",
        "diverged-run-called-passed",
        "no-verdict",
        "int-verdict",
        "claim-count",
        "unknown-role",
        "passed-with-an-unreproduced-failure",
        "passed-with-a-layer-wrong-alone",
    ],
)
def test_markdown_refuses_verdicts_that_do_not_follow_from_the_runs(small_report, tmp_path, damage, field):
    """A damaged report.json never renders as PASS: each verdict must have its type and follow from the runs."""
    document = json.loads((small_report[2] / "report.json").read_text(encoding="utf-8"))
    damage(document)
    damaged = tmp_path / "report.json"
    damaged.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=rf"damaged report.json \(ValueError: {re.escape(field)}[: ]"):
        markdown.render_file(damaged)


# --- any spec, any batch size ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deep_report(tmp_path_factory):
    """The default runs on DEEP, in batches of 4: (exit code, stdout, out dir)."""
    out = tmp_path_factory.mktemp("deep") / "report"
    stdout = io.StringIO()
    args = ["--arch", DEEP, "--batch-size", "4", "--train-size", "48", "--test-size", "10", "--epochs", "1"]
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout):
        patch.setattr(cli, "COMMANDS", {"report": cli.COMMANDS["report"]})
        code = cli.main(["report", "--out", str(out), *args])
    return code, stdout.getvalue(), out


def test_deep_arch_report_names_every_tensor_of_every_layer(deep_report):
    code, stdout, out = deep_report
    spec = parse_spec(DEEP)
    document = _load(out)
    assert code == 0 and document["schema"] == "cnn-parity/report/v3"
    assert [run["name"] for run in document["runs"]] == [
        f"float64 first/stable {DEEP} batch 4",
        f"float32 first/stable {DEEP} batch 4",
        f"float64 all/tutorial {DEEP} batch 4",
    ]
    for run in document["runs"]:
        assert run["architecture"] == DEEP and run["batch_size"] == 4
        assert run["config"]["arch"] == DEEP and run["config"]["batch_size"] == 4
        assert run["steps"] == 12  # 48 images in batches of 4
        assert list(run["max_abs_error"]) == list(spec.tensor_names)  # every tensor, in comparison order
        assert "relu1.out" in run["max_abs_error"] and "relu1.d_in" in run["max_abs_error"]
        assert list(run["percent_of_tolerance"]) == list(spec.tensor_names)
        assert run["image_shape"] == [28, 28]
        assert [layer["output_shape"] for layer in run["layers"]] == ["26x26x4", "26x26x4", "13x13x4", "10"]
        assert run["always_compared"] == ["dense1.out", "loss", "dense1.d_biases", "conv1.d_filters"]
    claims = _runs(document)
    assert claims[f"float64 first/stable {DEEP} batch 4"]["passed"]
    assert claims[f"float32 first/stable {DEEP} batch 4"]["passed"]
    divergence = claims[f"float64 all/tutorial {DEEP} batch 4"]["first_divergence"]
    assert (divergence["step"], divergence["tensor"], divergence["layer"]) == (0, "pool1.d_in", "pool1")
    assert divergence["diagnosis"]["kind"] == "tie_policy"
    text = (out / "report.md").read_text(encoding="utf-8")
    assert f"`{DEEP}` on 28x28 images, batches of 4" in text
    assert "| relu1   | relu        | 26x26x4        |" in text
    assert "| relu1.d_in " in text and "batches of 4 images per SGD step" in text
    assert "back into `relu1`, so `pool1.d_in` differs" in text  # the faithful explanation, in this spec's names
    assert "--arch conv3x4,relu,pool2,dense10 --batch-size 4" in text  # the command that reproduces it
    assert markdown.render_file(out / "report.json") == text


@pytest.mark.parametrize("arch", ["conv3x4,relu,dense10", "conv3x4,pool1,dense10"], ids=["no pool", "pool1"])
def test_a_spec_without_a_pool_that_can_tie_has_no_tie_policy_demonstration(report_cli, tmp_path, arch):
    out = tmp_path / "nopool"
    args = ["--train-size", "20", "--test-size", "10", "--epochs", "1", "--dtypes", "float64"]
    assert report_cli("--out", str(out), "--arch", arch.replace(",", " , "), *args) == 0
    (run,) = _load(out)["runs"]  # no --no-faithful, yet no faithful run: there is no window to tie
    assert run["architecture"] == arch and run["passed"]
    assert set(run["max_abs_error"]) == set(parse_spec(arch).tensor_names)
    assert "the tie policy plays no part" in (out / "report.md").read_text(encoding="utf-8")


def test_report_of_two_architectures_shows_each(tiny_results, tmp_path):
    results, (train, test) = tiny_results
    deep = run_experiment(ExperimentConfig(arch=DEEP, batch_size=3, epochs=1), train, test)
    path = writer.write_report(tmp_path / "two", [results[0], deep], title="two", command="test")
    text = path.read_text(encoding="utf-8")
    assert f"`{DEFAULT_SPEC}` on 28x28 images, batches of 1 - **float64 first/stable**" in text
    assert f"`{DEEP}` on 28x28 images, batches of 3 - **float64 first/stable {DEEP} batch 3**" in text
    assert [run["steps"] for run in _load(tmp_path / "two")["runs"]] == [30, 10]


def test_suite_cache_is_keyed_by_arch_and_batch_size(run_tutorial):
    tutorial = ExperimentConfig(epochs=1, stride=10)
    deep = run_tutorial(tutorial, arch=DEEP, batch_size=50)
    assert deep is run_tutorial(ExperimentConfig(arch=DEEP, batch_size=50, epochs=1, stride=10))
    assert (deep.config.arch, deep.config.batch_size, len(deep.record.steps)) == (DEEP, 50, 20)
    assert deep.record.spec.text == DEEP and deep.passed


# --- determinism -----------------------------------------------------------------------------------------------


def test_same_seed_same_json_apart_from_environment_and_timings(small_report, report_cli, tmp_path):
    assert report_cli("--out", str(tmp_path / "again"), *SMALL) == 0
    first, second = _load(small_report[2]), _load(tmp_path / "again")
    assert first["environment"] != {} and "seconds" in first["runs"][0]
    assert jsondoc.stable_part(first) == jsondoc.stable_part(second)


def test_another_seed_changes_the_json(report_cli, tmp_path):
    assert report_cli("--out", str(tmp_path / "a"), *TINY) == 0
    assert report_cli("--out", str(tmp_path / "b"), *TINY, "--seed", "1") == 0
    assert jsondoc.stable_part(_load(tmp_path / "a")) != jsondoc.stable_part(_load(tmp_path / "b"))


# --- exit codes and errors -------------------------------------------------------------------------------------


def test_tie_policy_all_for_the_parity_runs_exits_1(report_cli, tmp_path, capsys):
    out = tmp_path / "all"
    assert report_cli("--out", str(out), *TINY, "--tie-policy", "all") == 1
    run = _load(out)["runs"][0]
    assert run["role"] == "parity claim" and run["verdict"] == "diverged" and run["fails_exit_code"]
    assert run["first_divergence"]["tensor"] == "pool1.d_in"
    assert "FAIL: 1 of 1 parity claims diverged" in capsys.readouterr().out
    assert "**Verdict - FAIL" in (out / "report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dtypes", "float16"], "--dtypes: unknown dtype 'float16'"),
        (["--dtypes", "float64,float64"], "names a dtype twice"),
        (["--train-size", "-5"], "--train-size must be a positive integer, got '-5'"),
        (["--test-size", "0"], "--test-size must be a positive integer"),
        (["--epochs", "two"], "--epochs must be a positive integer, got 'two'"),
        (["--seed", "-1"], "--seed must be a non-negative integer"),
        (["--stride", "0"], "--stride must be a positive integer"),
        (["--tie-policy", "last"], "--tie-policy must be one of first, all"),
        (["--mode", "batch"], "--mode must be one of free, teacher"),
        (["--data-dir", "/nonexistent/mnist"], "--data-dir: data directory /nonexistent/mnist does not exist"),
        (["--batch-size", "0"], "--batch-size must be a positive integer, got '0'"),
        (["--arch", "conv3x8,poo2,dense10"], "--arch: network spec item 2 'poo2' (input 26x26x8): unknown item"),
        (["--arch", "conv30x8,dense10"], "--arch: network spec item 1 'conv30x8' (input 28x28x1): a 30x30 conv"),
        (["--arch", "conv3x8,dense10,pool2"], "item 3 'pool2' (input 10): a pool needs an image-shaped"),
        (["--arch", "conv3x8,pool2,dense5"], "must end in dense10"),
        (["--arch", ""], "--arch: network spec item 1 '' (input 28x28x1): empty item"),
        (["--train-size", "4500", "--test-size", "1000"], "--train-size 4500 --test-size 1000: 5,000 digits in"),
        (["--test-size", "4500"], "5,500 requested; ask for 5,000 or fewer in all"),
    ],
)
def test_bad_options_exit_2_with_one_line(report_cli, tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert report_cli("--out", str(out), *args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnn-parity report: error: "), captured.err
    assert message in lines[0]
    assert "Traceback" not in captured.err
    assert not out.exists()


def _idx_dir(path: Path, side: int, count: int = 20) -> Path:
    """MNIST-style IDX files of `count` random `side` x `side` digits per split."""
    rng = np.random.default_rng(0)
    path.mkdir()
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, size=(count, side, side), dtype=np.uint8)
        header = b"".join(n.to_bytes(4, "big") for n in (0x803, count, side, side))
        (path / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        labels = (np.arange(count) % 10).astype(np.uint8)
        header = b"".join(n.to_bytes(4, "big") for n in (0x801, count))
        (path / f"{prefix}-labels-idx1-ubyte").write_bytes(header + labels.tobytes())
    return path


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        # The items are checked before the data is read, without shapes (the data's size is not known yet) ...
        ("conv3x4,poo2,dense10", "--arch: network spec item 2 'poo2': unknown item"),
        # ... and the shapes once it is, against its own image size.
        ("conv3x4,pool2,conv9x4,dense10", "--arch: network spec item 3 'conv9x4' (input 7x7x4): a 9x9 conv"),
    ],
)
def test_bad_arch_with_a_data_dir_is_checked_against_its_images(report_cli, tmp_path, capsys, arch, message):
    data = _idx_dir(tmp_path / "idx", side=16)
    out = tmp_path / "never"
    sizes = ["--train-size", "10", "--test-size", "10"]
    assert report_cli("--out", str(out), "--data-dir", str(data), "--arch", arch, *sizes) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnn-parity report: error: "), lines
    assert message in lines[0] and "4096" not in lines[0] and "409" not in lines[0]
    assert not out.exists()


def test_refuses_to_replace_a_directory_that_is_not_a_report(report_cli, tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert report_cli("--out", str(precious), *TINY) == 2
    assert "is not empty and holds no cnn-parity report" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert report_cli("--out", str(a_file), *TINY) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_refuses_to_replace_a_previous_report_that_holds_files_it_did_not_write(
    report_cli, small_report, tmp_path, capsys
):
    """Replacing the directory would delete them: a note kept beside an old report survives, and the report too."""
    previous = tmp_path / "previous"
    shutil.copytree(small_report[2], previous)
    for note in ("notes.txt", "loss-notes.png"):  # the second named like a plot, but no run's
        (previous / note).write_text("keep me")
        before = sorted(path.name for path in previous.iterdir())
        assert report_cli("--out", str(previous), *TINY) == 2
        assert f"holds a previous report and files it did not write ({note})" in capsys.readouterr().err
        assert sorted(path.name for path in previous.iterdir()) == before
        (previous / note).unlink()
    assert report_cli("--out", str(previous), *TINY) in (0, 1)  # a previous report alone is replaced


def test_help_lists_the_options(report_cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report_cli("--help")
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--out", "--epochs", "--train-size", "--test-size", "--seed", "--dtypes", "--tie-policy"):
        assert option in help_text
    for option in ("--data-dir", "--stride", "--mode", "--no-faithful", "--arch", "--batch-size"):
        assert option in help_text
    assert DEFAULT_SPEC in help_text


def test_command_module_imports_without_torch():
    """`build_parser` imports every command module; `compare-golden` must still run where torch is absent."""
    code = (
        "import sys, reports.command, reports.writer; "
        "loaded = [m for m in ('torch', 'reference', 'parity.lockstep.experiment') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- atomic writes ---------------------------------------------------------------------------------------------


def _fail_on_second_call(monkeypatch, where, name, error):
    """`where.name` (or `where[name]` for a dict) raises `error` on its second call."""
    original, calls = (where[name] if isinstance(where, dict) else getattr(where, name)), []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise error
        return original(*args, **kwargs)

    if isinstance(where, dict):
        monkeypatch.setitem(where, name, failing)
    else:
        monkeypatch.setattr(where, name, failing)


def test_failure_mid_write_keeps_the_previous_report(report_cli, tmp_path, monkeypatch):
    from reports import plots

    out = tmp_path / "report"
    assert report_cli("--out", str(out), *TINY) == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    _fail_on_second_call(monkeypatch, plots.PLOTS, "loss", RuntimeError("disk on fire"))
    with pytest.raises(RuntimeError, match="disk on fire"):  # serial: drawn in this process, before anything is written
        report_cli("--out", str(out), *TINY, "--dtypes", "float64,float32", "--jobs", "1")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"], "temporary directories left behind"


def test_interrupt_mid_write_leaves_nothing(report_cli, tmp_path, monkeypatch, capsys):
    from reports import markdown

    out = tmp_path / "report"
    monkeypatch.setattr(markdown, "render", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert report_cli("--out", str(out), *TINY) == 130
    assert "interrupted; nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_a_previous_report(report_cli, tmp_path):
    out = tmp_path / "report"
    assert report_cli("--out", str(out), *TINY) == 0
    assert report_cli("--out", str(out), *TINY, "--seed", "3") == 0
    assert _load(out)["runs"][0]["config"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_move_into_place_without_atomic_exchange(tmp_path, monkeypatch):
    """The fallback (no renameat2): old report aside, new in, old removed."""
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    old, new = tmp_path / "out", tmp_path / "staging"
    old.mkdir()
    (old / "report.json").write_text("old")
    new.mkdir()
    (new / "report.json").write_text("new")
    atomic.move_into_place(new, old)
    assert (old / "report.json").read_text() == "new"
    assert (new / "report.json").read_text() == "old"  # the caller removes it


# --- reuse: results without test or progress, and the pytest option ---------------------------------------------


@pytest.fixture(scope="module")
def tiny_results():
    train, test = load_experiment_data(n_train=30, n_test=10)
    configs = [ExperimentConfig(epochs=1), ExperimentConfig(epochs=1, tie_policy="all", softmax="tutorial")]
    return [run_experiment(config, train, test) for config in configs], (train, test)


def test_write_report_without_test_or_progress(tiny_results, tmp_path):
    """`cnn-parity check` passes results whose `test` is {} and `progress` is []."""
    results, _ = tiny_results
    bare = [type(r)(r.config, r.record) for r in results]
    path = writer.write_report(tmp_path / "check", bare, title="check", command="cnn-parity check x.py")
    assert path == tmp_path / "check" / "report.md"
    document = _load(tmp_path / "check")
    assert [run["test"] for run in document["runs"]] == [{}, {}]
    assert [run["role"] for run in document["runs"]] == ["parity claim", "demonstration"]
    markdown = path.read_text(encoding="utf-8")
    assert "### Test" not in markdown and "### Progress" not in markdown and "### First step" in markdown


def test_suite_report_uses_the_session_cache(tiny_results, tmp_path):
    results, data = tiny_results
    cache = {r.config: r for r in results}
    ran = []

    def run(config, *data):
        ran.append(config)
        return run_experiment(config, *data)

    missing = ExperimentConfig(epochs=1, dtype="float32")
    path = write_suite_report(tmp_path / "suite", cache, defaults=[missing, results[0].config], data=data, run=run)
    assert ran == [missing]  # only what the suite had not run
    names = [run["name"] for run in _load(path.parent)["runs"]]
    assert names == ["float32 first/stable", "float64 first/stable", "float64 all/tutorial"]


def test_parity_report_option_is_registered(pytestconfig):
    pytestconfig.getoption("--parity-report")  # ValueError if conftest had not registered it


def test_parallel_runs_give_the_same_report_as_serial_ones(report_cli, tmp_path):
    """`--jobs 2` runs the three runs in worker processes; apart from timings and the environment, report.json is
    identical to a serial run's, and so is every plot, byte for byte (drawn by a worker, or by the command's own
    process after its warm-up: `then_here`)."""
    documents, plots = [], []
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        with contextlib.redirect_stdout(io.StringIO()):
            assert report_cli(*SMALL[:4], "--epochs", "1", "--out", str(out), "--jobs", jobs) == 0
        document = json.loads((out / "report.json").read_text(encoding="utf-8"))
        # The threads the runs were made with, in this process or in the workers: one each (parity.threads).
        assert (document["environment"]["torch_threads"], document["environment"]["numpy_blas_threads"]) == (1, 1)
        documents.append(jsondoc.stable_part(document))
        plots.append({png.name: png.read_bytes() for png in out.glob("*.png")})
    assert len(documents[0]["runs"]) == 3 and len(plots[0]) == 6
    assert documents[0] == documents[1]
    assert plots[0] == plots[1]


def test_the_last_run_s_then_here_tasks_run_in_the_caller_the_rest_in_workers(tmp_path, path_env):
    """Once every run has finished, the caller has nothing to do but wait: the last run's `then_here` tasks are run
    there, beside the workers' (the report's costliest plot). Every other task, and every task of the runs that
    finished before, is a worker's."""
    (tmp_path / "where_probe.py").write_text("import os\n\n\ndef pid(result):\n    return os.getpid()\n")
    script = (
        "import os\n"
        "import where_probe\n"
        "from parity.lockstep import parallel\n"
        "from parity.lockstep.experiment import ExperimentConfig\n"
        "from scratch.splits import load_experiment_data\n"
        "train, test = load_experiment_data(n_train=20, n_test=2)\n"
        "configs = [ExperimentConfig(epochs=1), ExperimentConfig(epochs=6, dtype='float32')]  # the second ends last\n"
        "tasks = [where_probe.pid, where_probe.pid]\n"
        "_, values = parallel.run_experiments(configs, train, test, jobs=2, then=tasks, then_here=(1,))\n"
        "print([[pid == os.getpid() for pid in run] for run in values])\n"
    )
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120, env=path_env)
    assert (done.returncode, done.stdout) == (0, "[[False, False], [False, True]]\n"), done.stderr


def test_a_parallel_report_never_imports_torch_in_its_own_process(tmp_path):
    """Where the workers make the runs, the command's process only reads their results and writes the report: it
    leaves torch (over a second of start-up and of a core the workers need) to them."""
    out = tmp_path / "report"
    code = (
        "import sys; from parity.cli import entry; "
        f"code = entry.main(['report', '--out', {str(out)!r}, *{SMALL!r}, '--jobs', '2']); "
        "assert code == 0, code; assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["environment"]["torch"].startswith("2.")


def test_workers_are_handed_the_longest_run_first():
    """The demonstration (it runs its layers alone at every full step) goes first; the rest keep their order."""
    runs = [ExperimentConfig(dtype="float64"), ExperimentConfig(dtype="float32")]
    runs.append(ExperimentConfig(tie_policy="all", softmax="tutorial"))
    assert parallel.longest_first(runs) == [2, 0, 1]


def test_the_report_command_counts_its_runs_without_building_them():
    """`run_count` (which decides, before torch is imported, whether to start the workers early) agrees with the
    runs `configs` builds."""
    for extra in ((), ("--no-faithful",), ("--dtypes", "float32"), ("--arch", "conv3x8,dense10")):
        options = report_command.check_options(build_parser().parse_args(["report", *extra]))
        assert report_command.run_count(options) == len(report_command.configs(options)[0])


def test_an_error_in_a_worker_is_raised_as_it_was_not_as_a_cancellation():
    """`then` fails in a worker (here: int() of a result): that error comes back, and nothing hangs."""
    train, test = load_experiment_data(n_train=4, n_test=2)
    configs = [ExperimentConfig(epochs=1), ExperimentConfig(epochs=1, dtype="float32")]
    with pytest.raises(TypeError, match="ExperimentResult"):
        parallel.run_experiments(configs, train, test, jobs=2, then=[int])


def test_an_error_in_a_then_here_task_is_raised_and_the_workers_are_ended():
    """The last run's `then_here` task fails in the caller: that error comes back, and no worker is left running."""
    import multiprocessing

    train, test = load_experiment_data(n_train=4, n_test=2)
    configs = [ExperimentConfig(epochs=1), ExperimentConfig(epochs=1, dtype="float32")]
    with pytest.raises(TypeError, match="ExperimentResult"):
        parallel.run_experiments(configs, train, test, jobs=2, then=[repr, int], then_here=(1,))
    assert not multiprocessing.active_children()


class _PoolRunningAtOnce:
    """A stand-in for the process pool: runs each task as it is submitted, noting which it ran."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, str]] = []

    def submit(self, task, result) -> Future:
        future = Future()
        future.set_result(task(result))
        self.ran.append(future.result())
        return future


def test_two_runs_finishing_at_once_give_the_caller_one_run_s_then_here_tasks_after_every_worker_task():
    """Both runs come out of one `wait`: every other task of both goes to the workers first, then the caller runs
    the `then_here` task of one of them only (not both runs' one after the other, the workers waiting meanwhile)."""
    calls: list[tuple[str, str]] = []

    def loss(result):
        calls.append(("loss", result))
        return ("loss", result)

    def errors(result):
        calls.append(("errors", result))
        return ("errors", result)

    runs = {}
    for index in (0, 1):
        runs[Future()] = index
    for future, index in runs.items():
        future.set_result(f"run {index}")
    pool = _PoolRunningAtOnce()
    extras = parallel._follow(pool, runs, [loss, errors], (1,), queue.Queue(), [None, None], None)
    in_caller = [call for call in calls if call not in pool.ran]
    assert len(pool.ran) == 3 and len(in_caller) == 1 and in_caller[0][0] == "errors"
    assert calls[-1] == in_caller[0]  # after the workers had all of theirs
    assert {key: future.result() for key, future in extras.items()} == {
        (index, position): (name, f"run {index}")
        for index in (0, 1)
        for position, name in enumerate(["loss", "errors"])
    }


def test_binned_error_maxima_ignore_nan_and_keep_step_0_alone():
    """Beyond MAX_POINTS steps the error plot draws each bin's largest error: NaN only where the whole bin is NaN, and
    step 0 (where a tie-rule difference shows alone) a point of its own."""
    from reports import plots

    n_steps = 2 * plots.MAX_POINTS  # bins of two steps after step 0: (1, 2), (3, 4), ...
    steps = np.arange(n_steps)
    errors = np.full(n_steps, 1e-15)
    errors[0], errors[1], errors[2], errors[3], errors[4] = 5.0, np.nan, 2e-14, np.nan, np.nan
    binned_steps, maxima = plots._binned_max(steps, errors, n_steps)
    assert list(binned_steps[:4]) == [0, 1, 3, 5]
    assert maxima[0] == 5.0 and maxima[1] == 2e-14 and np.isnan(maxima[2]) and maxima[3] == 1e-15


def test_plots_laid_out_once_are_the_bytes_tight_layout_and_savefig_give(monkeypatch):
    """`plots._save` lays a figure out itself so that `savefig` draws it only once: every plot's PNG is the one
    `Figure.tight_layout` followed by `savefig` writes."""
    from reports import plots

    train, test = load_experiment_data(n_train=50, n_test=10)
    result = run_experiment(ExperimentConfig(epochs=1, tie_policy="all", softmax="tutorial"), train, test)
    laid_out_once = {kind: plots.render(kind, result) for kind in plots.PLOTS}

    def matplotlib_s_own(figure, path):
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=plots.DPI)

    monkeypatch.setattr(plots, "_save", matplotlib_s_own)
    assert {kind: plots.render(kind, result) for kind in plots.PLOTS} == laid_out_once


def test_jobs_must_be_a_positive_integer(report_cli, capsys):
    assert report_cli("--jobs", "0") == 2
    assert "--jobs must be a positive integer, got '0'" in capsys.readouterr().err


def test_markdown_help_is_usage_not_a_missing_file(capsys):
    assert markdown.main(["--help"]) == 0 and capsys.readouterr().out.startswith(markdown.USAGE)
    for argv, problem in [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["report.json", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "expected one REPORT_JSON, got none"),
        (["a", "b"], "expected one REPORT_JSON, got 2"),
    ]:
        assert markdown.main(argv) == 2
        assert capsys.readouterr().err == f"{markdown.USAGE}\nreports.markdown: error: {problem}\n"


def _state(pid: int) -> tuple[str, int] | None:
    """(state, parent) of a process from /proc; None once it has ended (a zombie has ended, unreaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # the name may hold spaces
    except (OSError, IndexError):
        return None
    return None if fields[0] in "ZX" else (fields[0], int(fields[1]))


def _children(pid: int) -> list[int]:
    """The running processes whose parent is `pid`."""
    pids = (int(path.name) for path in Path("/proc").iterdir() if path.name.isdigit())
    return [child for child in pids if (_state(child) or ("", 0))[1] == pid]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes through Linux's /proc")
def test_workers_end_when_the_process_running_the_experiments_is_killed():
    """A SIGKILL (or an unhandled SIGTERM) of the caller runs none of its clean-up: the workers, waiting on a task
    queue they hold a write end of, used to live on, and the fork server with them."""
    script = (
        "import sys\n"
        "from parity.lockstep import parallel\n"
        "from parity.lockstep.experiment import ExperimentConfig\n"
        "from scratch.splits import load_experiment_data\n"
        "train, test = load_experiment_data(n_train=300, n_test=10)\n"
        "def started(config, steps):\n"
        "    print('running', flush=True)\n"
        "    sys.stdin.readline()  # wait here to be killed\n"
        "configs = [ExperimentConfig(), ExperimentConfig(dtype='float32')]\n"
        "parallel.run_experiments(configs, train, test, jobs=2, on_steps=started)\n"
    )
    command = [sys.executable, "-c", script]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT) as caller:
        try:
            assert caller.stdout.readline() == "running\n"
            started = time.monotonic()
            while True:  # the second worker may still be starting when the first reports
                servers = _children(caller.pid)  # the fork server (and the resource tracker, which ends on its own)
                workers = [worker for server in servers for worker in _children(server)]
                if len(workers) == 2 or time.monotonic() - started > 10:
                    break
                time.sleep(0.05)
            assert len(workers) == 2
        finally:
            caller.kill()
    deadline = time.monotonic() + 10
    while any(_state(pid) for pid in servers + workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in servers + workers if _state(pid)]
    assert not left, f"processes left running after their caller was killed: {left}"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes through Linux's /proc")
@pytest.mark.parametrize("to", ["caller", "group"])
def test_a_ctrl_c_ends_the_workers_at_once_without_their_tracebacks(to):
    """A SIGINT of the caller (`timeout -s INT`) or of its whole process group (a terminal's Ctrl-C): the workers
    leave it to their caller, which ends them rather than waiting for their runs of 100 epochs (a worker writing a
    result no one read used to hang the pool's shut-down)."""
    script = (
        CTRL_C_AS_IN_A_TERMINAL + "import sys\n"
        "from parity.lockstep import parallel\n"
        "from parity.lockstep.experiment import ExperimentConfig\n"
        "from scratch.splits import load_experiment_data\n"
        "train, test = load_experiment_data(n_train=1000, n_test=10)\n"
        "def started(config, steps):\n"
        "    print('running', flush=True)\n"
        "    sys.stdin.readline()  # wait here for the Ctrl-C\n"
        "configs = [ExperimentConfig(epochs=100), ExperimentConfig(dtype='float32', epochs=100)]\n"
        "try:\n"
        "    parallel.run_experiments(configs, train, test, jobs=2, on_steps=started)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    command = [sys.executable, "-c", script]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    with subprocess.Popen(command, **pipes, text=True, cwd=ROOT, start_new_session=True) as caller:
        try:
            assert caller.stdout.readline() == "running\n"
            servers = _children(caller.pid)
            workers = [worker for server in servers for worker in _children(server)]
            (os.kill if to == "caller" else os.killpg)(caller.pid, signal.SIGINT)
            out, err = caller.communicate(timeout=60)  # a hang guard: the runs themselves take minutes
        finally:
            caller.kill()
    assert out == "interrupted\n" and "Traceback" not in err, err
    deadline = time.monotonic() + 10
    while any(_state(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _state(pid)]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the fork server through Linux's /proc")
def test_a_ctrl_c_while_the_fork_server_still_loads_leaves_no_worker_to_fail(tmp_path, path_env):
    """The first submit waits for the fork server, which imports torch for a second or more (here it loads for 2 s).
    A Ctrl-C then used to leave the server to outlive its caller and, once loaded, fork the workers asked of it, each
    failing to read the caller's queue (gone by then) with a FileNotFoundError traceback under the command's one
    line. The caller now ends the server at once, and forgets it: a run right after starts a new one."""
    (tmp_path / "slow_preload.py").write_text("import time\n\ntime.sleep(2)\n")
    script = (
        CTRL_C_AS_IN_A_TERMINAL + "import os, signal, threading\n"
        "from parity.lockstep import parallel\n"
        "from parity.lockstep.experiment import ExperimentConfig\n"
        "from scratch.splits import load_experiment_data\n"
        "train, test = load_experiment_data(n_train=4, n_test=2)\n"
        "configs = [ExperimentConfig(epochs=1), ExperimentConfig(epochs=1, dtype='float32')]\n"
        "parallel.start_fork_server('slow_preload')\n"
        "server = parallel.multiprocessing.forkserver._forkserver._forkserver_pid\n"
        "threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()  # during the first submit\n"
        "try:\n"
        "    parallel.run_experiments(configs, train, test, jobs=2)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted; server', 'reaped' if not os.path.exists(f'/proc/{server}') else 'left', flush=True)\n"
        "results, _ = parallel.run_experiments(configs, train, test, jobs=2)\n"
        "print('then', len(results), 'runs', flush=True)\n"
    )
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120, env=path_env)
    assert (done.returncode, done.stdout) == (0, "interrupted; server reaped\nthen 2 runs\n"), done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_a_run_named_by_a_long_spec_gets_file_names_a_file_system_takes():
    """A run's name holds its spec; 46 ReLUs made plot names past 255 bytes, refused only after training."""
    from types import SimpleNamespace

    from reports.writer import MAX_SLUG, slug

    assert slug(SimpleNamespace(name="float64 first/stable")) == "float64-first-stable"
    spec = "relu," * 46 + "dense10"
    long, other = (slug(SimpleNamespace(name=f"float64 first/stable {spec}{end}")) for end in ("", "x"))
    assert len(long) <= MAX_SLUG and long.startswith("float64-first-stable-relu-relu") and long != other
    assert long == slug(SimpleNamespace(name=f"float64 first/stable {spec}"))  # the same name, the same file


def test_a_run_that_overflows_on_both_sides_is_reported_not_a_traceback(report_cli, tmp_path, capsys):
    # Four stacked 1x1 convs outgrow float64 within ten steps: NaN losses in the progress lines, which the JSON holds
    # as "nan" strings; the report renders them and NumPy's overflow warnings stay out of stderr.
    out = tmp_path / "report"
    arch = ["--arch", "conv1x8,conv1x8,conv1x8,conv1x8,dense10", "--train-size", "200", "--jobs", "1"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = report_cli("--out", str(out), *TINY, *arch)
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    run = _load(out)["runs"][0]
    divergence = run["first_divergence"]
    assert (divergence["diagnosis"]["kind"], divergence["diagnosis"]["evidence"]["side"]) == ("non_finite", "both")
    assert run["progress"][0]["scratch_loss"] == "nan"
    # No layer is blamed for an overflow both sides share: each is right where it could be judged, and not judged
    # from the step of the overflow on.
    layers = run["layers"]
    assert all(layer["passed"] and layer["origin"] == "unjudged" for layer in layers)
    assert {layer["first_unjudged_step"] for layer in layers} == {divergence["step"]}
    assert all(layer["unjudged_steps"] > 0 for layer in layers)
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "| nan " in markdown and "WRONG" not in markdown
    assert f"right; not judged at {layers[0]['unjudged_steps']} steps (non-finite values, first at step" in markdown


@pytest.mark.parametrize(
    ("demonstrations", "said"),
    [(1, "run did not diverge (it is not a parity claim"), (2, "runs did not diverge (they are not parity claims")],
)
def test_the_verdict_counts_the_demonstrations_that_did_not_diverge(demonstrations, said):
    from reports.summary import verdict_line

    runs = [{"name": "claim", "role": jsondoc.CLAIM, "passed": True}]
    runs += [{"name": f"demo{i}", "role": jsondoc.DEMONSTRATION, "passed": True} for i in range(demonstrations)]
    assert said in verdict_line({"runs": runs})


@pytest.mark.parametrize(
    ("flips", "text", "short"),
    [
        ({"windows": 12, "relu_signs": 0}, "12 window(s)", "12"),
        ({"windows": 12, "relu_signs": 1}, "12 window(s) and 1 ReLU sign(s)", "12 + 1 ReLU"),
        ({"windows": 0, "relu_signs": 3}, "3 ReLU sign(s)", "3 ReLU"),
        ({"windows": 0, "relu_signs": 0}, "0 window(s)", "0"),
        ({"windows": 1_200}, "1,200 window(s)", "1,200"),  # a report.json from before ReLU signs were counted
    ],
)
def test_near_tie_flips_are_counted_in_words_by_kind(flips, text, short):
    from reports.summary import flip_count_text

    assert flip_count_text(flips) == text
    assert flip_count_text(flips, short=True) == short
