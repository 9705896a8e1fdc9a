"""`cnn-parity report`: files, schema, determinism, exit codes, one-line errors, atomic writes, the faithful run.

Runs go through `parity.cli.main` in-process, on small real-MNIST experiments (200 train / 100 test, 1 epoch) so
the whole module takes seconds; the full default run is timed by hand and by `python -m parity.benchmark`.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from parity import cli
from parity.experiment import ExperimentConfig, run_experiment
from reports import jsondoc, writer
from reports.suite import write_suite_report
from scratch.data import load_experiment_data

SMALL = ["--train-size", "200", "--test-size", "100", "--epochs", "1"]
TINY = ["--train-size", "50", "--test-size", "10", "--epochs", "1", "--dtypes", "float64", "--no-faithful"]
RUN_KEYS = {"dtype", "tie_policy", "steps", "passed", "first_divergence", "max_abs_error", "test", "seconds"}


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
    assert document["schema"] == jsondoc.SCHEMA == "cnn-parity/report/v1"
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
        assert set(run["max_abs_error"]) >= {"conv_out", "d_conv_out", "filters", "loss"}
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
    assert (divergence["step"], divergence["tensor"], divergence["layer"]) == (0, "d_conv_out", "MaxPool2")
    assert divergence["diagnosis"].startswith("tie-policy difference")
    assert divergence["abs_error"] > divergence["allowed"]
    assert "expected divergence" in stdout
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "Why the tutorial's own code departs from PyTorch" in markdown
    assert "does not fail the verdict or the exit code" in markdown


def test_markdown_holds_the_tables(small_report):
    markdown = (small_report[2] / "report.md").read_text(encoding="utf-8")
    assert markdown.startswith("# ") and "**Verdict - PASS" in markdown
    for heading in (
        "## Summary",
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
    assert "| tensor " in markdown and "max \\|Δ\\|" in markdown and "| d_conv_out " in markdown
    assert "| float64 | 1e-12 " in markdown  # the tolerance table
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
    assert run["first_divergence"]["tensor"] == "d_conv_out"
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
        (["--data-dir", "/nonexistent/mnist"], "--data-dir /nonexistent/mnist does not exist"),
        (["--train-size", "4500", "--test-size", "1000"], "only 5,000 images available"),
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


def test_help_lists_the_options(report_cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report_cli("--help")
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--out", "--epochs", "--train-size", "--test-size", "--seed", "--dtypes", "--tie-policy"):
        assert option in help_text
    for option in ("--data-dir", "--stride", "--mode", "--no-faithful"):
        assert option in help_text


def test_command_module_imports_without_torch():
    """`build_parser` imports every command module; `compare-golden` must still run where torch is absent."""
    code = (
        "import sys, reports.command, reports.writer; "
        "loaded = [m for m in ('torch', 'reference', 'parity.experiment') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- atomic writes ---------------------------------------------------------------------------------------------


def _fail_on_second_call(monkeypatch, module, name, error):
    original, calls = getattr(module, name), []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)


def test_failure_mid_write_keeps_the_previous_report(report_cli, tmp_path, monkeypatch):
    from reports import plots

    out = tmp_path / "report"
    assert report_cli("--out", str(out), *TINY) == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    _fail_on_second_call(monkeypatch, plots, "loss_plot", RuntimeError("disk on fire"))
    with pytest.raises(RuntimeError, match="disk on fire"):
        report_cli("--out", str(out), *TINY, "--dtypes", "float64,float32")
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
    monkeypatch.setattr(writer, "_exchange", lambda a, b: False)
    old, new = tmp_path / "out", tmp_path / "staging"
    old.mkdir()
    (old / "report.json").write_text("old")
    new.mkdir()
    (new / "report.json").write_text("new")
    writer._move_into_place(new, old)
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
