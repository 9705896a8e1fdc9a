"""The self-test: every injected bug is caught and blamed on its own layer; the correct code passes."""

from __future__ import annotations

import pytest

from parity.check.bugs import BUGS, TUTORIAL, TWO_CONV, Bug, with_bug
from parity.check.loader import load_impl
from parity.check.run import DEFAULT_STEPS
from parity.check.selftest import DEFAULT_BASE, load_bases, run_all, run_bugs
from parity.cli import main
from scratch.splits import load_experiment_data

BY_NAME = {bug.name: bug for bug in BUGS}
# Where each bug must be caught: the main run, or the one probe that exercises what it breaks.
CAUGHT_BY = {
    "pool-odd-edge-shift": "odd-size",
    "softmax-unshifted-exp": "large-logits",
    "relu-gradient-at-zero": "relu-zero",
}
# The probes each correct implementation runs: relu-zero only where a ReLU follows a conv or dense layer.
PROBES_RUN = {
    TUTORIAL: ["constant", "large-logits", "odd-size"],
    TWO_CONV: ["constant", "large-logits", "odd-size", "relu-zero"],
}


@pytest.fixture(scope="module")
def outcomes():
    """Each correct implementation over the default steps and every probe, then each bug until its first
    divergence."""
    import torch

    torch.set_num_threads(1)
    train, _ = load_experiment_data()
    results = run_all(load_bases(), train.images, train.labels, steps=DEFAULT_STEPS)
    return {outcome.bug.name if outcome.bug else f"clean {outcome.base}": outcome for outcome in results}


def test_catalogue_is_large_and_covers_every_layer():
    assert len(BUGS) >= 20 and len(BY_NAME) == len(BUGS)
    tutorial = [bug for bug in BUGS if bug.base == TUTORIAL]
    two_conv = [bug for bug in BUGS if bug.base == TWO_CONV]
    assert {bug.cls for bug in tutorial} == {"Conv3x3", "MaxPool2", "Softmax"}
    # Spec layers: the tutorial's Softmax is dense1 and the softmax of the loss.
    assert {bug.layer for bug in tutorial} == {"conv1", "pool1", "dense1", "loss"}
    # The two-conv network: both convs (the one on 8 channels three times), a ReLU and the second pool.
    assert {bug.layer for bug in two_conv} == {"conv1", "conv2", "relu2", "pool2"}
    for name in ("flipped-kernel", "chw-flatten", "missing-bias-update", "lr-applied-twice", "softmax-jacobian-sign"):
        assert name in BY_NAME


@pytest.mark.parametrize("base", [TUTORIAL, TWO_CONV])
def test_correct_code_passes_everything(outcomes, base):
    clean = outcomes[f"clean {base}"]
    assert clean.ok and clean.result.passed
    assert len(clean.result.main.record.steps) == DEFAULT_STEPS
    assert [probe.name for probe in clean.result.probes] == PROBES_RUN[base]
    assert all(probe.passed and not probe.skipped for probe in clean.result.probes)


def test_the_two_conv_network_is_read_from_its_code(outcomes):
    arch = outcomes[f"clean {TWO_CONV}"].result.arch
    assert arch.spec.text == "conv5x8,relu,pool2,conv5x16,relu,pool2,dense10"
    assert [(b.param, b.layout, b.shape) for b in arch.layers[3].params] == [("filters", "(F, C, K, K)", (16, 8, 5, 5))]
    assert arch.layers[0].image_input and not arch.layers[3].image_input


@pytest.mark.parametrize("name", list(BY_NAME))
def test_bug_is_caught_and_blamed_on_its_layer(outcomes, name):
    outcome = outcomes[name]
    failure = outcome.result.first_failure
    assert failure is not None, f"{name} was not caught"
    assert failure.layer == BY_NAME[name].layer, failure.explanation()
    assert failure.name == CAUGHT_BY.get(name, "main"), failure.explanation()
    # Every bug is in code each step runs, and the first step's digit (or probe input) exercises it: tied windows,
    # non-zero gradients everywhere. So step 0 is where it first acts, and where the check must name it.
    assert failure.failure_step == 0, failure.explanation()
    assert outcome.ok and outcome.row()["result"] == "OK"


@pytest.mark.parametrize(
    ("name", "tensor", "kind", "evidence"),
    [
        ("flipped-kernel", "conv1.out", "permuted", {"recomputed": True}),
        (
            "lr-applied-twice",
            "conv1.d_filters",
            "scale",
            {"factor": pytest.approx(0.005), "reading": "the learning rate applied twice"},
        ),
        ("float32-conv", "conv1.out", "downcast", {}),
        ("conv-loop-off-by-one", "conv1.out", "partial", {"bottom_rows": 1, "right_columns": 1}),
        ("conv-input-gradient-flipped", "conv1.d_in", "permuted", {"recomputed": True}),
        ("pool-last-max", "pool1.d_in", "tie_policy", {"rule": "last"}),
        ("pool-swapped-indices", "pool1.d_in", "routing", {}),
        ("pool-odd-edge-shift", "pool1.d_in", "routing", {}),
        ("chw-flatten", "dense1.out", "permuted", {"recomputed": True}),
        ("missing-bias-update", "dense1.d_out", "dropped", {"all": True}),
        ("bias-gradient-mean", "dense1.d_out", "scale", {"factor": pytest.approx(0.1), "reading": "divided by 10"}),
        ("input-gradient-after-update", "dense1.d_in", "stale_weights", {}),
        ("softmax-unshifted-exp", "probs", "non_finite", {"side": "scratch"}),
        ("deep-input-gradient-one-channel", "conv2.d_in", "dropped", {}),
        ("first-conv-first-window-only", "conv1.d_filters", "partial", {}),
        ("two-conv-pool-last-max", "pool2.d_in", "tie_policy", {"rule": "last"}),
    ],
)
def test_divergence_names_the_tensor_and_the_kind_of_bug(outcomes, name, tensor, kind, evidence):
    """The diagnosis is data: its kind and evidence, not its sentence, are what is checked."""
    failure = outcomes[name].result.first_failure
    diagnosis = failure.record.first_divergence.diagnosis
    assert (failure.tensor, diagnosis.kind) == (tensor, kind), diagnosis.text
    assert {key: diagnosis.evidence.get(key) for key in evidence} == evidence
    assert failure.cause() == diagnosis.label


def test_the_unshifted_exp_is_named_only_with_its_evidence(outcomes):
    """Blamed on an unshifted exp only when scratch's logits are finite and past where exp overflows."""
    evidence = outcomes["softmax-unshifted-exp"].result.first_failure.record.first_divergence.diagnosis.evidence
    assert evidence["largest_logit"] > evidence["exp_overflows_at"]


def test_subtle_bugs_are_invisible_in_the_loss(outcomes):
    """The point of comparing every tensor: at the step these are caught, the loss still agrees with PyTorch."""
    for name in ("conv-input-gradient-flipped", "input-gradient-after-update", "pool-last-max", "missing-bias-update"):
        assert outcomes[name].loss_agrees() == "agrees", name


def test_a_bug_that_is_not_caught_fails_the_selftest(capsys):
    """A patch that changes nothing must show as MISSED, and a selftest with it fails."""
    train, _ = load_experiment_data()
    harmless = Bug("no-op", "conv1", "changed nothing", type("NoOp", (), {}))
    base = load_impl(str(DEFAULT_BASE))
    assert issubclass(with_bug(base, harmless).classes["Conv3x3"], base.classes["Conv3x3"])
    (outcome,) = run_bugs(base, train.images, train.labels, bugs=(harmless,), steps=20, clean=False)
    assert not outcome.caught and not outcome.ok and outcome.row()["result"] == "MISSED"


def test_bugs_are_not_run_against_a_base_that_fails_its_own_check(capsys):
    """The tutorial's own code (its tie rule) as the correct code: it diverges, so no bug could be told from it, and
    its bugs are listed as not run rather than judged (each could also have cost a hang's timeout)."""
    base = str(DEFAULT_BASE.parent / "tutorial_cnn")
    code = main(["selftest", "--base", base, "--steps", "5", "--bug", "pool-last-max", "--bug", "chw-flatten"])
    out = capsys.readouterr().out
    assert code == 1 and out.count("| tutorial ") == 1 and "FALSE POSITIVE" in out
    assert "Not run: pool-last-max, chw-flatten: the correct code of " in out and "What each bug is" not in out
    assert "FAIL: 0 of 0 bugs caught and blamed on the right layer, 2 not run; the correct code FAILS" in out


def test_selftest_command(capsys):
    code = main(["selftest"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert f"PASS: {len(BUGS)} of {len(BUGS)} bugs caught and blamed on the right layer" in out
    assert "the correct code passes everywhere (no false positive) (exit 0)" in out
    assert out.count("| OK ") == len(BUGS) + 2  # every bug, and each of the two correct implementations


def test_selftest_list_and_unknown_bug(capsys):
    assert main(["selftest", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(bug.name in listing for bug in BUGS)
    assert main(["selftest", "--bug", "no-such-bug"]) == 2
    assert "unknown bug no-such-bug" in capsys.readouterr().err
    assert main(["selftest", "--base", ""]) == 2  # not the working directory, and no traceback
    assert "--base: empty" in capsys.readouterr().err
    assert main(["selftest", "--steps", "99999999999999999999"]) == 2  # refused at once, as `check` refuses it
    assert "more than the 1,000,000 one run may take" in capsys.readouterr().err
