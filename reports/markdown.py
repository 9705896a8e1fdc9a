"""report.md: GitHub markdown that explains itself (verdict first, then what each run is, then the evidence).

It is rendered from the report.json document alone (`render(document)`), so a saved report.json re-renders the
same report.md: `python -m reports.markdown DIR/report.json`. Per-tensor tables are the comparison engine's own rows
(`TensorComparison.row()`, the numbers the pytest assertion messages use), stored in the document; this module only
formats them. Tensor and layer names are the run's spec names (`conv1.out`, `pool1.d_in`, `dense1`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from reports.blocks import table
from reports.jsondoc import CLAIM, SCHEMA, check_verdicts
from reports.run_section import run_section
from reports.summary import summary_table, verdict_line
from scratch.spec import pools_can_tie

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


TIE_POLICY_TEXT = {
    "first": "a tied max-pool window sends its gradient to its first maximum (row-major), as PyTorch does",
    "all": (
        "a tied max-pool window sends its gradient to every element equal to the maximum, as the tutorial's code does"
    ),
}
NO_POOL_TEXT = "no max-pool layer whose windows can tie, so the tie policy plays no part"
SOFTMAX_TEXT = {
    "stable": "softmax cross-entropy by log-sum-exp with the `p - onehot` gradient, as PyTorch computes it",
    "tutorial": (
        "the tutorial's softmax: an unshifted `exp`, loss `-log p[label]`, and the gradient `-1/p` pushed back "
        "through the softmax Jacobian"
    ),
}


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
        *_per_sample_note(document["runs"]),
        "## Environment",
        _environment_table(document["environment"]),
    ]
    for run in document["runs"]:
        parts += run_section(run)
    parts += [
        "## Files",
        "`report.json` holds these results in the versioned schema "
        f"`{document['schema']}`; apart from `environment` and each run's `seconds`, it is identical for "
        "identical options and seed. This file is rendered from it alone: `python -m reports.markdown report.json` "
        "prints it again (`> report.md` writes it).",
    ]
    return "\n\n".join(parts) + "\n"


def render_file(path: str | Path) -> str:
    """report.md for a saved report.json; ValueError (one line) for a file that is missing, not JSON, of another
    schema, or damaged."""
    try:
        data = _read_bytes(Path(path))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file; pass the report.json a report wrote") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory; pass the report.json inside it") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read it ({error.strerror or error})") from None
    try:
        document = json.loads(data.decode("utf-8"), parse_constant=_not_json)
    except ValueError as error:  # not UTF-8, or not JSON
        raise ValueError(f"{path}: not a report.json (not JSON text: {error})") from None
    except RecursionError:  # JSON nested thousands deep: no report is
        raise ValueError(f"{path}: not a report.json (its JSON is nested too deep to read)") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        found = document.get("schema") if isinstance(document, dict) else None
        raise ValueError(f"{path}: not a report.json of schema {SCHEMA!r} (schema {found!r})")
    try:
        check_verdicts(document)
        return render(document)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as error:
        raise ValueError(
            f"{path}: damaged report.json ({type(error).__name__}: {error}); write it again with `cnn-parity report`"
        ) from None


# report.json holds every run's progress and the steps a report shows: ~100 KB for the default report, a few MB for
# the longest runs. Far past that, what is read is no report (a device such as /dev/zero would fill memory).
MAX_REPORT_BYTES = 256 << 20


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; ValueError for a device or anything past MAX_REPORT_BYTES. A pipe is read (a shell's
    `<(...)`)."""
    if path.is_char_device() or path.is_block_device():
        raise ValueError(f"{path}: a device, not a file; pass the report.json a report wrote")
    with path.open("rb") as file:
        data = file.read(MAX_REPORT_BYTES + 1)
    if len(data) > MAX_REPORT_BYTES:
        raise ValueError(f"{path}: larger than {MAX_REPORT_BYTES:,} bytes, which no report.json is")
    return data


def _not_json(constant: str) -> None:
    """`parse_constant` for json.loads: NaN and Infinity are not JSON (report.json writes them as strings)."""
    raise ValueError(f"{constant} is not a JSON value; report.json writes non-finite numbers as strings")


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
        if run["role"] == CLAIM
        else "a **demonstration**, expected to diverge; it never fails the verdict or the exit code"
    )
    can_tie = pools_can_tie(str(run["architecture"]))
    ties = TIE_POLICY_TEXT.get(run["tie_policy"], run["tie_policy"]) if can_tie else NO_POOL_TEXT
    batch = (
        "one image per SGD step" if run["batch_size"] == 1 else f"batches of {run['batch_size']} images per SGD step"
    )
    return (
        f"- **{run['name']}** - {role}. `{run['architecture']}`, {batch}; {run['dtype']}; {ties}; "
        f"{SOFTMAX_TEXT.get(run['softmax'], run['softmax'])}; {mode}; {stride}. "
        f"{config['epochs']} epoch(s), lr {config['lr']}, seed {config['seed']}, {config['impl']} layers."
    )


def _per_sample_note(runs: list[dict]) -> list[str]:
    """For runs on batches: the atol their per-sample gradients are judged under (`Tolerance.per_sample_of`)."""
    batches = sorted({run["batch_size"] for run in runs if run["batch_size"] > 1})
    if not batches:
        return []
    sizes = ", ".join(map(str, batches))
    return [
        f"On batches of N images (here N = {sizes}) the loss is their mean, so each per-sample gradient (the `d_in` "
        "and `d_out` tensors) is 1/N of the sample's own, and so is its rounding: those tensors are judged under "
        "atol / N, the rtol unchanged."
    ]


def _environment_table(environment: dict[str, object]) -> str:
    rows = []
    for key, value in environment.items():
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        rows.append({"": ENVIRONMENT_LABELS.get(key, key), "value": f"`{value}`" if key == "git_commit" else value})
    return table(rows)


USAGE = "usage: python -m reports.markdown REPORT_JSON"


def main(argv: list[str] | None = None) -> int:
    """`python -m reports.markdown DIR/report.json`: print the report.md that report.json renders to."""
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["-h"], ["--help"]):
        print(
            "usage: python -m reports.markdown REPORT_JSON\n\nPrint the report.md that a saved report.json renders to."
        )
        return 0
    options = [arg for arg in argv if arg.startswith("-")]
    if options or len(argv) != 1:
        problem = (
            f"unrecognized arguments: {' '.join(options)}"
            if options
            else f"expected one REPORT_JSON, got {len(argv) or 'none'}"
        )
        print(f"{USAGE}\nreports.markdown: error: {problem}", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(render_file(argv[0]))
    except (OSError, ValueError) as error:
        print(f"reports.markdown: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
