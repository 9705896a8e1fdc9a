"""`python -m parity.benchmark` runs every section end to end (one tiny round: a smoke test, no timing asserted)."""

from __future__ import annotations

import contextlib
import io

import pytest

from parity.benchmark.run import main


def test_every_section_runs_and_prints_its_targets():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--steps", "2", "--repeats", "1"]) == 0
    text = out.getvalue()
    for heading in ("== train_step", "== lockstep", "== deep spec"):
        assert heading in text
    assert "lockstep, stride 1" in text and "<= 1.3x" in text  # #13's target row is printed, met or not


def test_bad_usage_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's convention
        main(["--steps", "0"])
    assert exit_info.value.code == 2
    assert "--steps" in capsys.readouterr().err
