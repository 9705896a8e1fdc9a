"""report.md: GitHub markdown that explains itself (verdict first, then what each run is, then the evidence).

It is rendered from the report.json document alone (`render(document)`), so a saved report.json re-renders the
same report.md: `python -m reports.markdown DIR/report.json`. Per-tensor tables are the comparison engine's own rows
(`TensorComparison.row()`, the numbers the pytest assertion messages use), stored in the document; this module only
formats them. Tensor and layer names are the run's spec names (`conv1.out`, `pool1.d_in`, `dense1`).
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from tabulate import tabulate

from reports.jsondoc import EXPECTED, SCHEMA
from reports.summary import layer_rows, number, summary_table, verdict_line
from scratch.spec import NetworkSpec, parse_spec

ENVIRONMENT_LABELS = {
    "python": "Python",
    "platform": "platform",
    "numpy": "NumPy",
    "numpy_blas": "NumPy BLAS",
    "numpy_blas_threads": "NumPy BLAS threads",
    "numpy_blas_kernel": "NumPy BLAS kernel",
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
    "first": "a tied max-pool window sends its gradient to its first maximum (row-major), as PyTorch does",
    "all": (
        "a tied max-pool window sends its gradient to every element equal to the maximum, as the tutorial's code does"
    ),
}
NO_POOL_TEXT = "no max-pool layer, so the tie policy plays no part"
SOFTMAX_TEXT = {
    "stable": "softmax cross-entropy by log-sum-exp with the `p - onehot` gradient, as PyTorch computes it",
    "tutorial": (
        "the tutorial's softmax: an unshifted `exp`, loss `-log p[label]`, and the gradient `-1/p` pushed back "
        "through the softmax Jacobian"
    ),
}

FLIP_EXPLANATION = (
    "In float32, rounding occasionally makes two almost-equal values of a pool window swap order, so scratch "
    "and PyTorch send that window's gradient to different elements - both are a maximum to within rounding. The "
    "engine proves each such flip (the two candidates differ by no more than the forward tolerance, the amount "
    "routed agrees, and the flip explains every out-of-tolerance element), marks the affected tensors EXPLAINED "
    "rather than FAIL, and then re-synchronises scratch to the reference's weights, so the run goes on measuring "
    "rounding error rather than the consequences of one legitimate routing choice."
)

LAYERS_EXPLANATION = (
    "At every step compared in full, each layer of scratch is also run alone on the reference's input to it, the "
    "reference's gradient at its output and the reference's weights, and judged on what it gives back (_on its "
    "own_). A layer that is right there is never blamed for what the layers before it got wrong: its tensors may "
    "still differ in the whole-network run (_inherited_), because it was fed inputs that were already off."
)
STEP_HEADINGS = {"first": "First step", "worst": "Worst step", "first_failing": "First failing step"}


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


def comparison_table(rows: Sequence[dict[str, object]]) -> str:
    """The engine's per-tensor rows (max abs, max rel, ULPs, % of tolerance, result), as stored in report.json."""
    return table(rows)


@functools.lru_cache(maxsize=32)
def _parsed(text: str, image_shape: tuple[int, int], num_classes: int) -> NetworkSpec:
    return parse_spec(text, image_shape, num_classes)


def run_spec(run: dict[str, object]) -> NetworkSpec:
    """The run's network spec, re-parsed from what report.json records (its text, image shape, classes)."""
    return _parsed(str(run["architecture"]), tuple(run["image_shape"]), int(run["num_classes"]))


def render(document: dict[str, object]) -> str:
    """The whole report, from the report.json document alone."""
    parts = [
        f"# {document['title']}",
        f"**Verdict - {verdict_line(document)}.**",
        f"Command: `{document['command']}`" + (f"  \nData: {document['data']}" if document["data"] else ""),
        "## Summary",
        summary_table(document),
        "_worst % of tol_: the largest share of its tolerance any element of any tensor used at any step "
        "(100% = at the limit; explained near-tie flips excluded). _seconds_: time spent in each side's "
        "forward + backward + update, and in recording and comparing.",
        "## Architecture",
        *_architectures(document["runs"]),
        "## What each run is",
        "\n".join(_run_description(run) for run in document["runs"]),
        "## Tolerances",
        "An element passes when |scratch - reference| <= atol + rtol * |reference| (the rule of "
        "`torch.testing.assert_close`, with the project's own numbers, from `parity.engine.tolerances`):",
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
    for run in document["runs"]:
        parts += _run_section(run)
    parts += [
        "## Files",
        "`report.json` holds these results in the versioned schema "
        f"`{document['schema']}`; apart from `environment` and each run's `seconds`, it is identical for "
        "identical options and seed. This file is rendered from it alone: `python -m reports.markdown report.json` "
        "writes it again.",
    ]
    return "\n\n".join(parts) + "\n"


def render_file(path: str | Path) -> str:
    """report.md for a saved report.json; ValueError (one line) for a file that is missing, not JSON, of another
    schema, or damaged."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file; pass the report.json a report wrote") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory; pass the report.json inside it") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read it ({error.strerror or error})") from None
    except ValueError as error:  # not UTF-8, or not JSON
        raise ValueError(f"{path}: not a report.json (not JSON text: {error})") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        found = document.get("schema") if isinstance(document, dict) else None
        raise ValueError(f"{path}: not a report.json of schema {SCHEMA!r} (schema {found!r})")
    try:
        return render(document)
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        raise ValueError(
            f"{path}: damaged report.json ({type(error).__name__}: {error}); write it again with `cnn-parity report`"
        ) from None


def _architectures(runs: Sequence[dict[str, object]]) -> list[str]:
    """One layer table per distinct architecture (a report usually has one), naming the runs that use it."""
    groups: dict[tuple[str, tuple[int, ...]], list[dict[str, object]]] = {}
    for run in runs:
        groups.setdefault((run["architecture"], tuple(run["image_shape"])), []).append(run)
    parts = []
    for (text, image_shape), members in groups.items():
        names = "" if len(groups) == 1 else " - " + ", ".join(f"**{run['name']}**" for run in members)
        batch_sizes = sorted({run["batch_size"] for run in members})
        batches = " or ".join(map(str, batch_sizes))
        parts.append(
            f"`{text}` on {'x'.join(map(str, image_shape))} images, batches of {batches}{names}. Each layer's "
            "output per sample (height x width x channels; a dense layer's units), as the spec gives it "
            "(`NetworkSpec.describe()`); the tensors compared are named after these layers:"
        )
        image = {"layer": "image", "spec item": "-", "output shape": "x".join(map(str, (*image_shape, 1)))}
        layers = [
            {"layer": layer["name"], "spec item": layer["item"], "output shape": layer["output_shape"]}
            for layer in members[0]["layers"]
        ]
        parts.append(table([image, *layers]))
    return parts


def _has_pool(run: dict[str, object]) -> bool:
    return any(layer["kind"] == "pool" for layer in run["layers"])


def _run_description(run: dict[str, object]) -> str:
    config = run["config"]
    steps = run["steps"]
    mode = (
        f"free-running: each side trains on its own weights for {steps:,} steps, so rounding differences accumulate"
        if run["mode"] == "free"
        else f"teacher-forced: before each of {steps:,} steps scratch takes the reference's weights, so each step's "
        "error is measured alone"
    )
    small = ", ".join(f"`{name}`" for name in run["always_compared"])
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
    ties = TIE_POLICY_TEXT.get(run["tie_policy"], run["tie_policy"]) if _has_pool(run) else NO_POOL_TEXT
    batch = (
        "one image per SGD step" if run["batch_size"] == 1 else f"batches of {run['batch_size']} images per SGD step"
    )
    return (
        f"- **{run['name']}** - {role}. `{run['architecture']}`, {batch}; {run['dtype']}; {ties}; "
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


def _is_tie_policy_divergence(run: dict[str, object]) -> bool:
    divergence = run["first_divergence"]
    if run["verdict"] != EXPECTED or divergence is None or divergence["diagnosis"]["kind"] != "tie_policy":
        return False
    kinds = {layer["name"]: layer["kind"] for layer in run["layers"]}
    return kinds.get(divergence["layer"]) == "pool" and divergence["tensor"] == f"{divergence['layer']}.d_in"


def _run_section(run: dict[str, object]) -> list[str]:
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
                "max % of tol": run["percent_of_tolerance"].get(name, "-"),
                "at step": where.get("step", "?"),
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
    if run["role"] == "parity claim":
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


def main(argv: list[str] | None = None) -> int:
    """`python -m reports.markdown DIR/report.json`: print the report.md that report.json renders to."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m reports.markdown REPORT_JSON", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(render_file(argv[0]))
    except (OSError, ValueError) as error:
        print(f"reports.markdown: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
