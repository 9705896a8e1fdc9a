"""One run's section of report.md, from that run's entry in report.json: the outcome, why the tutorial-faithful run
departs (in the run's own names), each layer on its own, the plots, the steps shown, the largest errors, the
tutorial's progress lines, the test pass and the time spent."""

from __future__ import annotations

import math

from parity.lockstep.local import ALONE_EVERY
from reports.blocks import comparison_table, run_spec, table
from reports.jsondoc import CLAIM, EXPECTED
from reports.summary import flip_count_text, layer_rows, number

PLOT_CAPTIONS = {"loss": "training loss, both sides", "errors": "log10 max |Δ| per tensor over the steps"}

FLIP_EXPLANATION = (
    "Rounding (mostly in float32) occasionally makes two almost-equal values of a pool window swap order, so scratch "
    "and PyTorch send that window's gradient to different elements - both are a maximum to within rounding. The "
    "engine proves each such flip (the two candidates differ by no more than the forward tolerance, the amount "
    "routed agrees, and the flip explains every out-of-tolerance element), marks the affected tensors EXPLAINED "
    "rather than FAIL, and then re-synchronises scratch to the reference's weights, so the run goes on measuring "
    "rounding error rather than the consequences of one legitimate routing choice. A ReLU input within rounding of "
    "0 can likewise come out positive on one side only (passing its gradient on that side alone); it is proven and "
    "counted the same way, as a ReLU sign."
)

LAYERS_EXPLANATION = (
    "At every step compared in full, each layer of scratch is judged on its own (_on its own_): run alone on the "
    "reference's input to it, the reference's gradient at its output and the reference's weights, and judged on "
    "what it gives back. Pools and ReLUs, which route by comparisons, always run alone. At a step where every "
    "tensor of the network agreed, that agreement already vouches for each conv and dense layer, which then run "
    f"alone only at the first step compared in full and every {ALONE_EVERY}th after it, as a check; at every step "
    "where a tensor differs, every layer does. A layer that is right on its own is never blamed for what the layers "
    "before it got wrong: its tensors may still differ in the whole-network run (_inherited_), because it was fed "
    "inputs that were already off. A layer fed a non-finite value (the run has overflowed), or whose only "
    "differences are NaN on both sides, is not judged at that step (_not judged_, counted): an overflow both sides "
    "share is nobody's error."
)


def _is_tie_policy_divergence(run: dict[str, object]) -> bool:
    divergence = run["first_divergence"]
    if run["verdict"] != EXPECTED or divergence is None or divergence["diagnosis"]["kind"] != "tie_policy":
        return False
    kinds = {layer["name"]: layer["kind"] for layer in run["layers"]}
    return kinds.get(divergence["layer"]) == "pool" and divergence["tensor"] == f"{divergence['layer']}.d_in"


def run_section(run: dict[str, object]) -> list[str]:
    """One run's part of report.md: its outcome, its layers on their own, plots, shown steps, largest errors,
    progress, test and time."""
    parts = [f"## Run: {run['name']} ({run['role']})", _outcome(run)]
    if _is_tie_policy_divergence(run):
        parts.append(_faithful_explanation(run) + " " + _faithful_evidence(run))
    parts += ["### Each layer on its own", LAYERS_EXPLANATION, table(layer_rows(run)), *_layer_diagnoses(run)]
    parts.append(_flips(run))
    if run["unreproduced_failures"]:
        steps = ", ".join(map(str, run["unreproduced_failures"]))
        parts.append(
            f"**Not reproducible:** step(s) {steps} failed, then passed when replayed in full from the same weights. "
            "One side is not deterministic, so no divergence can be located; the run does not pass. "
            "Rerun with `--stride 1` to compare every tensor at the step itself."
        )
    if run["missing_tensors"]:
        parts.append(
            f"Not compared (scratch produced no such tensor): {', '.join(f'`{n}`' for n in run['missing_tensors'])}."
        )
    plots = run["plots"]
    if plots:
        parts += ["### Plots"] + [f"![{PLOT_CAPTIONS.get(kind, kind)}]({name})" for kind, name in plots.items()]
    shown = run["shown_steps"]
    if "first" in shown:
        parts += [f"### First step (step {shown['first']['step']})", comparison_table(shown["first"]["rows"])]
    worst = run["worst_step"]
    if "worst" in shown:
        step = shown["worst"]
        parts.append(f"### Worst step (step {step['step']}, {number(step['percent_of_tolerance'])}% of tolerance)")
        if not step["every_tensor_compared"]:
            compared = ", ".join(f"`{row['tensor']}`" for row in step["rows"])
            parts.append(f"A strided step: only {compared} are compared on it.")
        parts.append(comparison_table(step["rows"]))
    elif worst is not None:
        parts.append(f"The worst step is the first step ({number(worst['percent_of_tolerance'])}% of tolerance).")
    if "first_failing" in shown:
        step = shown["first_failing"]
        parts += [f"### First failing step (step {step['step']})", comparison_table(step["rows"])]
    parts += [
        "### Largest |Δ| of each tensor over the run",
        "Every tensor of every layer, in comparison order (forward, loss, backward, parameters after the update); "
        "_max % of tol_ is the largest share of its allowance any of its elements used at any step.",
        _largest_table(run),
    ]
    parts += _progress(run)
    parts += _test(run)
    parts += _timing(run)
    return parts


def _layer_diagnoses(run: dict[str, object]) -> list[str]:
    """The full sentence of each layer's diagnosis, where there is one."""
    lines = [
        f"- `{layer['name']}`, step {layer['step']}, `{layer['diagnosis']['tensor']}`: {layer['diagnosis']['text']}."
        for layer in run["layers"]
        if layer["diagnosis"] is not None
    ]
    return ["\n".join(lines)] if lines else []


def _largest_table(run: dict[str, object]) -> str:
    """The largest |Δ| and share of tolerance per tensor, with the step the |Δ| came from."""
    rows = []
    for name, value in run["max_abs_error"].items():
        where = run["max_abs_error_at"].get(name, {})
        rows.append(
            {
                "tensor": name,
                "max |Δ| over all steps": value,
                "step of max |Δ|": where.get("step", "?"),
                "max % of tol": run["percent_of_tolerance"].get(name, "-"),
                "note": "explained near-tie flip" if where.get("explained") else "",
            }
        )
    return table(rows)


def _outcome(run: dict[str, object]) -> str:
    steps = f"{run['steps']:,} steps"
    divergence = run["first_divergence"]
    if divergence is None and run["unreproduced_failures"]:
        return "**Failed**: a failure could not be reproduced (see below)."
    if divergence is None:
        worst = run["worst_step"]
        used = f"; the worst step used {number(worst['percent_of_tolerance'])}% of the tolerance" if worst else ""
        return f"**Passed**: every compared tensor stayed within tolerance at all {steps}{used}."
    if run["role"] == CLAIM:
        head = "**Diverged** (this parity claim fails the verdict and the exit code)"
    else:
        head = "**Diverged, as expected** (a demonstration: this does not fail the verdict or the exit code)"
    return f"{head}. First divergence: {divergence['message']}"


def _faithful_explanation(run: dict[str, object]) -> str:
    """Why a tie-policy divergence at a pool's input gradient is one of definition, in the run's own names."""
    spec = run_spec(run)
    divergence = run["first_divergence"]
    pool = spec.layer(divergence["layer"])
    index = [layer.name for layer in spec.layers].index(pool.name)
    below = f"`{spec.layers[index - 1].name}`" if index > 0 else "the image"
    names = spec.tensor_names
    later = [
        f"`{info.name}`" for info in spec.tensors[names.index(divergence["tensor"]) + 1 :] if info.phase == "backward"
    ]
    k = pool.kernel
    return (
        "**Why the tutorial's own code departs from PyTorch.** The tutorial's max-pool backward copies the gradient "
        "to *every* pixel that equals its window's maximum, while PyTorch's `max_pool2d` backward gives it to the "
        "*first* maximum only. MNIST digits sit on a blank background: wherever a filter sees only blank pixels its "
        f"output is the same number, so many {k}x{k} windows of `{pool.name}` hold that number several times - a "
        "tie. The forward pass is unaffected (the max is the max), but in a tied window the tutorial sends up to "
        f"{k * k} times the gradient back into {below}, so `{divergence['tensor']}` differs from the very first "
        "step, and with it "
        + (f"{', '.join(later)} and " if later else "")
        + "the updated parameters. That is a difference of definition, not of arithmetic: it is not a scratch bug, "
        "and no tolerance could or should absorb it."
    )


def _faithful_evidence(run: dict[str, object]) -> str:
    spec = run_spec(run)
    first = run["shown_steps"].get("first")
    if first is None:
        return ""
    early = {info.name for info in spec.tensors if info.phase == "forward" or info.role == "d_out"}
    agreeing = [row["tensor"] for row in first["rows"] if row["tensor"] in early and row["result"] == "PASS"]
    failing = [row["tensor"] for row in first["rows"] if row["result"] == "FAIL"]
    tied = first["tied_windows"]
    sentence = (
        f"Here, at step {first['step']}, "
        + (f"{tied:,} pool windows were tied; " if tied is not None else "")
        + (
            f"{', '.join(f'`{name}`' for name in agreeing)} agreed within tolerance (the tutorial's softmax "
            "rounds differently but stays within the float tolerance there), "
            if agreeing
            else ""
        )
        + f"while {', '.join(f'`{name}`' for name in failing)} did not."
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
    if not flips["steps"]:
        return "Near-tie routing flips: none."
    steps, resynced = _steps_text(flips["steps"]), _steps_text(flips["resynced_steps"])
    if flips["steps"] == flips["resynced_steps"]:
        where = f"at step(s) {steps}, after each of which scratch re-synchronised to the reference"
    else:
        where = f"at step(s) {steps}; scratch re-synchronised to the reference after step(s) {resynced}"
    return f"Near-tie routing flips: {flip_count_text(flips)} {where}. {FLIP_EXPLANATION}"


# Steps listed in full up to this many; past it, the first ones and a count (report.json holds every one).
MAX_STEPS_LISTED = 20


def _steps_text(steps: list[int]) -> str:
    """`3, 17, 40`, or the first MAX_STEPS_LISTED and how many more; `none` for no step."""
    if not steps:
        return "none"
    shown = ", ".join(map(str, steps[:MAX_STEPS_LISTED]))
    more = len(steps) - MAX_STEPS_LISTED
    return shown + (f" and {more:,} more (every one in report.json)" if more > 0 else "")


def _progress(run: dict[str, object]) -> list[str]:
    progress = run["progress"]
    if not progress:
        return []
    rows = [
        {
            "epoch": line["epoch"],
            "step": line["step"],
            "scratch avg loss": number(line["scratch_loss"], ".3f"),
            "scratch accuracy": f"{line['scratch_accuracy']:.0f}%",
            "reference avg loss": number(line["reference_loss"], ".3f"),
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
