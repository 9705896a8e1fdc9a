"""report.md: GitHub markdown that explains itself (verdict first, then what each run is, then the evidence).

Per-tensor tables are the comparison engine's own rows (`TensorComparison.row()`, the numbers the pytest assertion
messages use); this module only formats them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from tabulate import tabulate

from parity.compare import TensorComparison
from parity.lockstep import always_compared
from reports.jsondoc import EXPECTED
from reports.summary import number, summary_table, verdict_line
from scratch.network import FORWARD_TENSORS

if TYPE_CHECKING:  # torch-free at import time: parity.experiment imports the reference (torch)
    from parity.experiment import ExperimentResult
    from parity.lockstep import StepRecord

ENVIRONMENT_LABELS = {
    "python": "Python",
    "platform": "platform",
    "numpy": "NumPy",
    "numpy_blas": "NumPy BLAS",
    "numpy_blas_threads": "NumPy BLAS threads",
    "torch": "PyTorch",
    "torch_blas": "PyTorch BLAS",
    "torch_threads": "PyTorch intra-op threads",
    "device": "device",
    "gpu": "GPU",
    "tf32_matmul": "TF32 matmul allowed",
    "tf32_cudnn": "TF32 cuDNN allowed",
    "cpu_count": "CPU cores",
    "dtypes": "dtypes",
    "seeds": "seeds",
    "git_commit": "project git commit",
    "generated_at": "generated (UTC)",
}

PLOT_CAPTIONS = {"loss": "training loss, both sides", "errors": "log10 max |Δ| per tensor over the steps"}

TIE_POLICY_TEXT = {
    "first": "a tied 2x2 max-pool window sends its gradient to its first maximum (row-major), as PyTorch does",
    "all": (
        "a tied 2x2 max-pool window sends its gradient to every element equal to the maximum, "
        "as the tutorial's code does"
    ),
}
SOFTMAX_TEXT = {
    "stable": "softmax cross-entropy by log-sum-exp with the `p - onehot` gradient, as PyTorch computes it",
    "tutorial": (
        "the tutorial's softmax: an unshifted `exp`, loss `-log p[label]`, and the gradient `-1/p` pushed back "
        "through the softmax Jacobian"
    ),
}

FAITHFUL_EXPLANATION = (
    "**Why the tutorial's own code departs from PyTorch.** The tutorial's `MaxPool2.backprop` copies the gradient to "
    "*every* pixel that equals its window's maximum, while PyTorch's `max_pool2d` backward gives it to the *first* "
    "maximum only. MNIST digits sit on a blank background: wherever a 3x3 filter sees only blank pixels its output "
    "is the same number, so many 2x2 pool windows hold that number four times - a tie. The forward pass is "
    "unaffected (the max is the max), but in a tied window the tutorial sends up to four times the gradient back "
    "into the convolution, so `d_conv_out` differs from the very first step, and with it `d_filters`, `d_image` "
    "and the updated filters. That is a difference of definition, not of arithmetic: it is not a scratch bug, and "
    "no tolerance could or should absorb it."
)

FLIP_EXPLANATION = (
    "In float32, rounding occasionally makes two almost-equal values of a 2x2 pool window swap order, so scratch "
    "and PyTorch send that window's gradient to different elements - both are a maximum to within rounding. The "
    "engine proves each such flip (the two candidates differ by no more than the forward tolerance, the amount "
    "routed agrees, and the flip explains every out-of-tolerance element), marks the affected tensors EXPLAINED "
    "rather than FAIL, and then re-synchronises scratch to the reference's weights, so the run goes on measuring "
    "rounding error rather than the consequences of one legitimate routing choice."
)


def table(rows: Sequence[dict[str, object]], spec: str = ".3g") -> str:
    """A GitHub table of `rows`; floats `spec`-formatted, everything else as text."""
    if not rows:
        return "_(nothing to show)_"
    headers = [_cell(key) for key in rows[0]]
    body = [
        [_cell(number(value, spec) if isinstance(value, float) else value) for value in row.values()] for row in rows
    ]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def _cell(value: object) -> str:
    """Table cell text; a `|` inside a cell would end it in GitHub markdown, so it is escaped."""
    return str(value).replace("|", "\\|")


def comparison_table(comparisons: Iterable[TensorComparison]) -> str:
    """The engine's per-tensor rows (max abs, max rel, ULPs, % of tolerance, result)."""
    return table([c.row() for c in comparisons])


def render(document: dict[str, object], results: Sequence[ExperimentResult]) -> str:
    """The whole report."""
    parts = [
        f"# {document['title']}",
        f"**Verdict - {verdict_line(document)}.**",
        f"Command: `{document['command']}`" + (f"  \nData: {document['data']}" if document["data"] else ""),
        "## Summary",
        summary_table(document),
        "_worst % of tol_: the largest share of its tolerance any element of any tensor used at any step "
        "(100% = at the limit; explained near-tie flips excluded). _seconds_: time spent in each side's "
        "forward + backward + update, and in recording and comparing.",
        "## What each run is",
        "\n".join(_run_description(run) for run in document["runs"]),
        "## Tolerances",
        "An element passes when |scratch - reference| <= atol + rtol * |reference| (the rule of "
        "`torch.testing.assert_close`, with the project's own numbers, from `parity.tolerances`):",
        table(
            [
                {"dtype": dtype, "atol": t["atol"], "rtol": t["rtol"], "why this size": t["reason"]}
                for dtype, t in document["tolerances"].items()
            ],
            ".0e",
        ),
        "## Environment",
        _environment_table(document["environment"]),
    ]
    for run, result in zip(document["runs"], results, strict=True):
        parts += _run_section(run, result)
    parts += [
        "## Files",
        "`report.json` holds these results in the versioned schema "
        f"`{document['schema']}`; apart from `environment` and each run's `seconds`, it is identical for "
        "identical options and seed.",
    ]
    return "\n\n".join(parts) + "\n"


def _run_description(run: dict[str, object]) -> str:
    config = run["config"]
    steps = run["steps"]
    mode = (
        f"free-running: each side trains on its own weights for {steps:,} steps, so rounding differences accumulate"
        if run["mode"] == "free"
        else f"teacher-forced: before each of {steps:,} steps scratch takes the reference's weights, so each step's "
        "error is measured alone"
    )
    small = ", ".join(always_compared(run["mode"]))
    stride = (
        "every tensor compared at every step"
        if run["stride"] == 1
        else f"every tensor compared every {run['stride']} steps and {small} at every step; "
        f"a failure replays the steps since the last full comparison with every tensor compared, so the first "
        f"divergence is exact ({run['replayed_steps']:,} steps replayed)"
    )
    role = (
        "a **parity claim**: it fails the verdict (and the exit code) if any tensor leaves tolerance"
        if run["role"] == "parity claim"
        else "a **demonstration**, expected to diverge; it never fails the verdict or the exit code"
    )
    return (
        f"- **{run['name']}** - {role}. {run['dtype']}; "
        f"{TIE_POLICY_TEXT.get(run['tie_policy'], run['tie_policy'])}; "
        f"{SOFTMAX_TEXT.get(run['softmax'], run['softmax'])}; {mode}; {stride}. "
        f"{config['epochs']} epoch(s), lr {config['lr']}, seed {config['seed']}, {config['impl']} layers."
    )


def _environment_table(environment: dict[str, object]) -> str:
    rows = []
    for key, value in environment.items():
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        rows.append({"": ENVIRONMENT_LABELS.get(key, key), "value": f"`{value}`" if key == "git_commit" else value})
    return table(rows)


def _run_section(run: dict[str, object], result: ExperimentResult) -> list[str]:
    record = result.record
    parts = [f"## Run: {run['name']} ({run['role']})", _outcome(run, result)]
    if (
        run["verdict"] == EXPECTED
        and run["first_divergence"]["tensor"] == "d_conv_out"
        and ("tie-policy" in run["first_divergence"]["diagnosis"])
    ):
        parts.append(FAITHFUL_EXPLANATION + " " + _faithful_evidence(run, result))
    parts.append(_flips(run))
    if run["unreproduced_failures"]:
        steps = ", ".join(map(str, run["unreproduced_failures"]))
        parts.append(
            f"**Not reproducible:** step(s) {steps} failed, then passed when replayed in full from the same weights. "
            "One side is not deterministic, so no divergence can be located; the run does not pass. "
            "Rerun with `--stride 1` to compare every tensor at the step itself."
        )
    if record.missing_tensors:
        parts.append(
            f"Not compared (scratch produced no such tensor): {', '.join(f'`{n}`' for n in record.missing_tensors)}."
        )
    plots = run["plots"]
    if plots:
        parts += ["### Plots"] + [f"![{PLOT_CAPTIONS.get(kind, kind)}]({name})" for kind, name in plots.items()]
    shown: set[int] = set()
    if record.steps:
        parts += [f"### First step (step {record.steps[0].step})", comparison_table(record.steps[0].comparisons)]
        shown.add(record.steps[0].step)
    worst = record.worst_step()
    if worst is not None and worst.step not in shown:
        parts.append(f"### Worst step (step {worst.step}, {number(100 * worst.tolerance_used)}% of tolerance)")
        if not worst.full:
            compared = ", ".join(f"`{c.name}`" for c in worst.comparisons)
            parts.append(f"A strided step: only {compared} are compared on it.")
        parts.append(comparison_table(worst.comparisons))
        shown.add(worst.step)
    elif worst is not None:
        parts.append(f"The worst step is the first step ({number(100 * worst.tolerance_used)}% of tolerance).")
    divergence = record.first_divergence
    if divergence is not None and divergence.step not in shown:
        parts += [f"### First failing step (step {divergence.step})", comparison_table(_step(record, divergence.step))]
    parts += [
        "### Largest |Δ| of each tensor over the run",
        _largest_table(run, result),
    ]
    parts += _progress(run)
    parts += _test(run)
    parts += _timing(run)
    return parts


def _largest_table(run: dict[str, object], result: ExperimentResult) -> str:
    """The record's largest |Δ| per tensor, with the step it came from (and whether that step was an explained flip)."""
    where: dict[str, tuple[int, str]] = {}
    largest = run["max_abs_error"]
    for step in result.record.steps:
        for c in step.comparisons:
            if c.name not in where and c.max_abs_error == largest.get(c.name):
                where[c.name] = (step.step, "explained near-tie flip" if c.explained else "")
    rows = []
    for name, value in largest.items():
        step, note = where.get(name, ("?", ""))
        rows.append({"tensor": name, "max |Δ| over all steps": value, "at step": step, "note": note})
    return table(rows)


def _step(record, index: int) -> list[TensorComparison]:
    step: StepRecord = record.steps[index]
    return step.comparisons


def _outcome(run: dict[str, object], result: ExperimentResult) -> str:
    steps = f"{run['steps']:,} steps"
    divergence = result.record.first_divergence
    if divergence is None and run["unreproduced_failures"]:
        return "**Failed**: a failure could not be reproduced (see below)."
    if divergence is None:
        worst = run["worst_step"]
        used = f"; the worst step used {number(worst['percent_of_tolerance'])}% of the tolerance" if worst else ""
        return f"**Passed**: every compared tensor stayed within tolerance at all {steps}{used}."
    if run["role"] == "parity claim":
        head = "**Diverged** (this parity claim fails the verdict and the exit code)"
    else:
        head = "**Diverged, as expected** (a demonstration: this does not fail the verdict or the exit code)"
    return f"{head}. First divergence: {divergence.message()}"


def _faithful_evidence(run: dict[str, object], result: ExperimentResult) -> str:
    first = result.record.steps[0]
    agreeing = [c for c in first.comparisons if c.name in FORWARD_TENSORS + ("d_logits",) and c.passed]
    failing = [c.name for c in first.comparisons if not c.passed]
    sentence = (
        f"Here, at step 0, {first.tied_windows:,} pool windows were tied; "
        + (
            f"{', '.join(f'`{c.name}`' for c in agreeing)} agreed within tolerance (the tutorial's softmax "
            "rounds differently but stays within the float tolerance there), "
            if agreeing
            else ""
        )
        + f"while {', '.join(f'`{n}`' for n in failing)} did not."
    )
    test = run["test"]
    if test:
        sentence += (
            f" After {run['steps']:,} {'free-running' if run['mode'] == 'free' else 'teacher-forced'} steps, "
            f"test accuracy is {100 * test['scratch']['accuracy']:.1f}% with the tutorial's semantics against "
            f"{100 * test['reference']['accuracy']:.1f}% for PyTorch."
        )
    return sentence


def _flips(run: dict[str, object]) -> str:
    flips = run["near_tie_flips"]
    if not flips["windows"]:
        return "Near-tie routing flips: none."
    resynced = ", ".join(map(str, flips["resynced_steps"])) or "none"
    return (
        f"Near-tie routing flips: {flips['windows']} window(s) at step(s) {', '.join(map(str, flips['steps']))}; "
        f"scratch re-synchronised to the reference after step(s) {resynced}. {FLIP_EXPLANATION}"
    )


def _progress(run: dict[str, object]) -> list[str]:
    progress = run["progress"]
    if not progress:
        return []
    rows = [
        {
            "epoch": line["epoch"],
            "step": line["step"],
            "scratch avg loss": f"{line['scratch_loss']:.3f}",
            "scratch accuracy": f"{line['scratch_accuracy']:.0f}%",
            "reference avg loss": f"{line['reference_loss']:.3f}",
            "reference accuracy": f"{line['reference_accuracy']:.0f}%",
            "|Δ avg loss|": _gap(line["scratch_loss"], line["reference_loss"]),
        }
        for line in progress
    ]
    return [
        "### Progress: the tutorial's lines, both sides",
        "`[Step N] Past 100 steps: Average Loss ... | Accuracy: ...%`, every 100 steps of each epoch:",
        table(rows),
    ]


def _gap(a: float, b: float) -> str:
    if isinstance(a, str) or isinstance(b, str) or not (math.isfinite(a) and math.isfinite(b)):
        return "n/a"
    return number(abs(a - b), ".2g")


def _test(run: dict[str, object]) -> list[str]:
    test = run["test"]
    if not test:
        return []
    rows = [
        {
            "side": side,
            "test loss": number(test[side]["loss"], ".12g"),
            "test accuracy": f"{100 * test[side]['accuracy']:.1f}%",
        }
        for side in ("scratch", "reference")
    ]
    rows.append(
        {
            "side": "|Δ|",
            "test loss": _gap(test["scratch"]["loss"], test["reference"]["loss"]),
            "test accuracy": f"{100 * abs(test['scratch']['accuracy'] - test['reference']['accuracy']):.1f} points",
        }
    )
    return ["### Test", table(rows)]


def _timing(run: dict[str, object]) -> list[str]:
    seconds = run["seconds"]
    steps = max(run["steps"], 1)
    what = {
        "scratch": "scratch forward + backward + update",
        "reference": "PyTorch forward + backward + SGD step (and handing its tensors over)",
        "compare": "recording and comparing",
        "replay": "replaying strided steps in full (to locate a failure, or to close the run)",
    }
    rows = [
        {"part": what.get(part, part), "seconds": f"{value:.2f}", "ms per step": f"{1000 * value / steps:.3f}"}
        for part, value in seconds.items()
    ]
    trained = seconds.get("scratch", 0.0) + seconds.get("reference", 0.0)
    note = (
        f"Recording and comparing took {100 * seconds['compare'] / trained:.0f}% of the time both sides spent "
        "training here; `python -m parity.benchmark` measures it against training both models bare."
        if trained > 0 and "compare" in seconds
        else ""
    )
    return ["### Time", table(rows)] + ([note] if note else [])
