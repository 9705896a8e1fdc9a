"""The short summary table (one row per run), shared by the terminal and the top of report.md."""

from __future__ import annotations

import math

from parity.diagnosis.record import label
from parity.engine.tables import text_table
from reports.jsondoc import CLAIM, DEMONSTRATION, DIVERGED, EXPECTED, NO_DIVERGENCE, PASSED

RESULT_TEXT = {
    PASSED: "passed",
    DIVERGED: "DIVERGED",
    EXPECTED: "expected divergence (demo)",
    NO_DIVERGENCE: "no divergence (demo)",
}


def number(value: object, spec: str = ".3g") -> str:
    """A float for a table: `spec`-formatted; non-finite values (or their JSON strings) as written."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def short_diagnosis(diagnosis: dict[str, object]) -> str:
    """A diagnosis record's few words for a table: `tie-policy difference (all)`, `-1 x the reference`, ..."""
    return label(str(diagnosis["kind"]), dict(diagnosis["evidence"]))


def first_divergence_text(run: dict[str, object]) -> str:
    """`step 0 pool1.d_in (tie-policy difference)`, or `none`."""
    divergence = run["first_divergence"]
    if divergence is None:
        unreproduced = run.get("unreproduced_failures")
        return f"not reproducible (step {unreproduced[0]})" if unreproduced else "none"
    return f"step {divergence['step']} {divergence['tensor']} ({short_diagnosis(divergence['diagnosis'])})"


def accuracy_text(run: dict[str, object]) -> str:
    """Test accuracy of scratch / reference, or a dash when the run had no test pass."""
    test = run["test"]
    if not test:
        return "-"
    return " / ".join(f"{100 * test[side]['accuracy']:.1f}%" for side in ("scratch", "reference"))


def seconds_text(run: dict[str, object]) -> str:
    """`scratch / reference / compare` seconds."""
    seconds = run["seconds"]
    return " / ".join(f"{seconds.get(part, 0.0):.1f}" for part in ("scratch", "reference", "compare"))


def flip_count_text(flips: dict[str, object], short: bool = False) -> str:
    """`12 window(s)`, `1 ReLU sign(s)` or both joined by `and`; `0 window(s)` for none (`12`, `1 ReLU`, `12 + 1
    ReLU` and `0` when `short`)."""
    windows, signs = flips["windows"], flips.get("relu_signs", 0)  # a report.json from before ReLU signs has none
    parts = []  # (short, long)
    if windows or not signs:
        parts.append((f"{windows:,}", f"{windows:,} window(s)"))
    if signs:
        parts.append((f"{signs:,} ReLU", f"{signs:,} ReLU sign(s)"))
    return " + ".join(short_text for short_text, _ in parts) if short else " and ".join(text for _, text in parts)


def summary_rows(document: dict[str, object]) -> list[dict[str, str]]:
    """One row per run, in run order."""
    rows = []
    for run in document["runs"]:
        worst = run["worst_step"]
        flips = run["near_tie_flips"]
        rows.append(
            {
                "run": run["name"],
                "steps": f"{run['steps']:,}",
                "result": RESULT_TEXT[run["verdict"]],
                "worst % of tol": number(worst["percent_of_tolerance"]) if worst else "-",
                "first divergence": first_divergence_text(run),
                "near-tie flips": flip_count_text(flips, short=True),
                "test acc scratch / ref": accuracy_text(run),
                "seconds scratch / ref / compare": seconds_text(run),
            }
        )
    return rows


LOCAL_TEXT = {True: "right", False: "WRONG", None: "not judged"}
ORIGIN_TEXT = {
    "local": "its own error",
    "propagated": "inherited: right on the reference's inputs",
    "unjudged": "agrees where judged",
    None: "agrees",
}


def local_text(layer: dict[str, object]) -> str:
    """A layer's own verdict for a table: `right`, `WRONG`, `not judged`, with the steps it could not be judged at
    (non-finite values: an overflow) when there were any."""
    unjudged = layer.get("unjudged_steps") or 0  # absent from reports written before it was recorded
    if not unjudged:
        return LOCAL_TEXT[layer["passed"]]
    steps = f"{unjudged:,} step{'s' * (unjudged > 1)}"
    why = f"(non-finite values, first at step {layer['first_unjudged_step']})"
    if layer["passed"] is None:  # it ran alone only where nothing could be compared
        return f"not judged at its {steps} {why}"
    return f"{LOCAL_TEXT[layer['passed']]}; not judged at {steps} {why}"


def layer_rows(run: dict[str, object]) -> list[dict[str, str]]:
    """One row per layer of a run: its own verdict (fed from the reference), its first local failure and why, and
    whether its tensors diverged in the whole-network run because of itself or of what it was fed."""
    rows = []
    for layer in run["layers"]:
        diagnosis = layer["diagnosis"]
        rows.append(
            {
                "layer": f"{layer['name']} ({layer['kind']})",
                "on its own": local_text(layer),
                "first local failure": "-" if layer["step"] is None else f"step {layer['step']} {layer['tensor']}",
                "diagnosis": "-" if diagnosis is None else short_diagnosis(diagnosis),
                "in the lockstep run": ORIGIN_TEXT[layer["origin"]],
            }
        )
    return rows


def layers_table(document: dict[str, object], tablefmt: str = "github") -> str:
    """Every run's layers, one row each (see `layer_rows`)."""
    rows = [{"run": run["name"], **row} for run in document["runs"] for row in layer_rows(run)]
    return text_table(rows, tablefmt)


def summary_table(document: dict[str, object], tablefmt: str = "github") -> str:
    """The summary as a table."""
    return text_table(summary_rows(document), tablefmt)


def verdict_line(document: dict[str, object]) -> str:
    """One sentence: do all parity claims hold, and what about the demonstrations."""
    runs = document["runs"]
    claims = [run for run in runs if run["role"] == CLAIM]
    demos = [run for run in runs if run["role"] == DEMONSTRATION]
    failed = [run["name"] for run in claims if not run["passed"]]
    if not claims:
        head = "NO PARITY CLAIM: no run here claims parity"
    elif failed:
        head = f"FAIL: {len(failed)} of {len(claims)} parity claims diverged ({', '.join(failed)})"
    else:
        every = {1: "the", 2: "both"}.get(len(claims), f"all {len(claims)}")
        claim_s, hold_s = ("s", "") if len(claims) > 1 else ("", "s")
        names = ", ".join(run["name"] for run in claims)
        head = f"PASS: {every} parity claim{claim_s} hold{hold_s} ({names})"
    tail = ""
    diverged_demos = [run["name"] for run in demos if not run["passed"]]
    if diverged_demos:
        tail = (
            f"; the demonstration run{'s' if len(diverged_demos) > 1 else ''} ({', '.join(diverged_demos)}) "
            "diverged as expected, which does not count against the verdict or the exit code"
        )
    elif demos:
        plural = len(demos) > 1
        tail = (
            f"; the demonstration run{'s' if plural else ''} did not diverge "
            f"({'they are' if plural else 'it is'} not {'parity claims' if plural else 'a parity claim'} either way)"
        )
    return head + tail
