"""What `cnn-parity check` prints and writes: the terminal summary (`render`: what was read from the code, the main
run, each layer on its own, the edge probes and the verdict line) and, with `--out`, report.md and report.json
(`write_check_report`, with what was read and every run's outcome under `check`).

Nothing here imports torch or the report writer at module level.
"""

from __future__ import annotations

from pathlib import Path

from parity.check.infer import Architecture
from parity.check.layercalls import format_layers
from parity.check.results import CheckResult, RunResult
from parity.cli.errors import UsageError
from parity.engine.compare import TensorComparison
from parity.engine.tables import text_table

RECOVERY_EPS_HALF = 2.0**-53  # half of float64's eps: the rounding of a gradient recovered from an update


def render(result: CheckResult, seconds: float | None = None) -> str:
    """The terminal summary: what was inferred and driven, the main run, each layer, the probes, the verdict."""
    impl, main, arch = result.impl, result.main, result.arch
    seen = [n for n, how in main.provenance.items() if "return value" in how or "cached" in how]
    recovered = [n for n, how in main.provenance.items() if how.startswith("recovered")]
    missing = {n: how for n, how in main.provenance.items() if how.startswith("not compared")}
    lines = [f"cnn-parity check {impl.label}", *header_lines(arch)]
    lines += [
        f"  driven as the tutorial's train(): lr {main.lr:g}, float64, {result.mode}-running, weights from seed "
        f"{result.seed} shared with the PyTorch twin; tensors carry a batch axis of 1",
        f"  data:      {main.steps_planned} steps of {result.data_source or 'real MNIST'}",
        f"  seen:      {', '.join(seen)}; loss as -log(probs[label])",
        f"  recovered: {', '.join(recovered)} from the in-place SGD update, (before - after) / lr "
        f"(error <= eps/2 |w| / lr: ~{RECOVERY_EPS_HALF * 0.5 / main.lr:.0e} here for |w| ~0.5, inside the 1e-12 "
        "atol)",
    ]
    for name, how in missing.items():
        lines.append(f"  missing:   {name} ({how.removeprefix('not compared: ')})")
    lines += [
        "",
        _run_headline("Main run", main),
        "",
        "  Each layer on its own (fed the twin's inputs, gradients and weights):",
        "",
    ]
    lines += ["  " + row for row in layers_text(main).splitlines()]
    if not main.passed:
        lines.append(f"  first divergence: {main.explanation()}")
        if main.record.first_divergence is not None:
            lines.append('  ("scratch" = the implementation under check, "reference" = the PyTorch twin)')
            step = main.record.steps[main.record.first_divergence.step]
            lines += ["", f"  step {step.step}, every tensor compared ({step.tied_windows} tied pool windows):", ""]
            lines += ["  " + row for row in step_table(step.comparisons).splitlines()]
    if result.probes:
        lines += ["", "Edge probes:", "", *("  " + row for row in probe_table(result.probes).splitlines())]
        for probe in result.probes:
            if not probe.passed:
                lines.append(f"  - {probe.name}: {probe.explanation()}")
            elif probe.skipped:
                lines.append(f"  - {probe.name}: skipped: {probe.skipped}")
    lines += ["", verdict_line(result) + (f" [{seconds:.1f} s]" if seconds is not None else "")]
    return "\n".join(lines)


def header_lines(arch: Architecture) -> list[str]:
    """The first lines of the output: the classes, the layers built, the spec read from them and how, per layer."""
    impl = arch.impl
    built = "from --layers" if impl.calls is not None else "the tutorial's, sized from the code"
    lines = [
        f"  classes:   {impl.describe()}"
        + (f"; names mapped: {impl.mapping.describe()}" if impl.mapping.names else ""),
        f"  layers:    {format_layers(arch.calls)} ({built})",
        f"  inferred:  {arch.spec.text} on {'x'.join(map(str, arch.spec.image_shape))} images:",
    ]
    width = max(len(row["layer"]) for row in arch.rows())
    objects = max(len(row["object"]) for row in arch.rows())
    for row in arch.rows():
        lines.append(f"    {row['layer']:<{width}}  {row['object']:<{objects}}  {row['inferred']}")
    for choice in arch.found:
        lines.append(f"  found:     {choice.text()}")
    return lines


def _run_headline(label: str, run: RunResult) -> str:
    if run.passed:
        return (
            f"{label}: PARITY over {len(run.record.steps)} steps: every tensor within float64 tolerance at every step "
            f"(worst step used {100 * run.record.worst_tolerance_used:.2g}% of it)"
        )
    if run.wrong_alone is not None:
        alone = run.wrong_alone
        return (
            f"{label}: DIVERGED at step {alone.step}, {alone.name} {alone.tensor}, on its own only (the whole-network "
            f"run agreed at every step it took)"
        )
    if run.record.first_divergence is None:
        return f"{label}: {run.verdict} at step {run.crash_step} of {run.steps_planned}: {run.crash_text()}"
    div = run.record.first_divergence
    origin = f" from {run.origins[div.tensor]}" if div.tensor in run.origins else ""
    return (
        f"{label}: DIVERGED at step {div.step}, {div.layer} {div.tensor}{origin} "
        f"({run.failing_steps} of {len(run.record.steps)} steps out of tolerance)"
    )


def layers_text(run: RunResult) -> str:
    """One row per layer: its own verdict, first local failure and diagnosis (as report.md's table)."""
    from reports.jsondoc import layer_entries
    from reports.summary import layer_rows

    return text_table(layer_rows({"layers": layer_entries(run.record)}))


def step_table(comparisons: list[TensorComparison]) -> str:
    """The engine's per-tensor rows (`TensorComparison.row`), numbers shown to 3 significant digits."""
    return text_table([c.row() for c in comparisons])


def probe_table(probes: list[RunResult]) -> str:
    """One row per probe: what it does, how many steps, the verdict and the first divergence."""
    rows = []
    for probe in probes:
        first = ""
        if not probe.passed:
            step = probe.failure_step
            where = f"{probe.layer} {probe.tensor}" if probe.tensor else probe.layer
            first = f"step {step}, {where}: {probe.cause()}" if probe.tensor else probe.cause()
        rows.append(
            {
                "probe": probe.name,
                "what": probe.title,
                "steps": len(probe.record.steps),
                "result": probe.verdict,
                "first divergence": first,
            }
        )
    return text_table(rows)


def verdict_line(result: CheckResult) -> str:
    """`PARITY (exit 0)` or `DIVERGENCE: ... (exit 1)`."""
    if result.passed:
        ran = [probe for probe in result.probes if not probe.skipped]
        skipped = len(result.probes) - len(ran)
        probes = f" and {len(ran)} edge probe{'s' if len(ran) != 1 else ''}" if ran else ""
        note = f" ({skipped} probe skipped)" if skipped else ""
        agree = "agree" if ran else "agrees"
        return f"PARITY: the main run{probes} {agree} with PyTorch tensor by tensor{note} (exit 0)"
    failing = [run for run in result.runs if not run.passed]
    first = result.first_failure
    names = ", ".join("main run" if run.name == "main" else run.name for run in failing)
    run = "main run" if first.name == "main" else f"{first.name} probe"
    if first.record.first_divergence is None and first.wrong_alone is None:  # the code raised or hung
        what = "HUNG" if first.crash.timed_out else "CRASHED"
        where = f"{first.crash.where} ({first.layer})"
        return f"{what} in {names}; first: {where} at step {first.failure_step} of the {run} (exit 1)"
    where = f"{first.layer} {first.tensor or ''}".strip()
    return f"DIVERGENCE in {names}; first: {where} at step {first.failure_step} of the {run} (exit 1)"


def environment_now() -> dict[str, object] | None:
    """The threads and PyTorch of this process now (`reports.environment.run_environment`), for a report written
    after the runs; None where reports are not available."""
    try:
        from reports import environment
    except ImportError:
        return None
    return environment.run_environment()


def write_check_report(
    result: CheckResult,
    out_dir: str,
    command: str,
    data_source: str = "",
    run_environment: dict[str, object] | None = None,
) -> Path:
    """The same report.md / report.json as `cnn-parity report` (one ExperimentResult per run that took steps), with
    what was read from the code, and every run's outcome, under the document's `check` key; `run_environment`: the
    threads and PyTorch the runs were made with (`environment_now()` while they ran), when not those of now.

    A run the code raised (or hung) in fails like a divergence, whatever its steps before agreed; a skipped probe
    took no step and claims nothing, so it is only listed under `check`."""
    try:
        from reports.writer import build_document, write_document
    except ImportError as error:
        raise UsageError(f"--out needs reports.writer, which is not available ({error})") from None
    from parity.lockstep.experiment import ExperimentConfig, ExperimentResult, progress_lines
    from reports.jsondoc import CLAIM, DIVERGED

    results, runs = [], [run for run in result.runs if not run.skipped]
    for run in runs:
        impl = f"check:{result.impl.label}" + ("" if run.name == "main" else f" probe:{run.name}")
        config = ExperimentConfig(
            arch=run.record.spec.text,
            dtype="float64",
            impl=impl,
            epochs=1,
            lr=run.lr,
            seed=result.seed,
            mode=result.mode,
        )
        results.append(ExperimentResult(config, run.record, progress=progress_lines(run.record.steps, 0)))
    title = f"cnn-parity check: {result.impl.label}"
    document = build_document(
        results, title=title, command=command, data_source=data_source, run_environment=run_environment
    )
    for entry, run in zip(document["runs"], runs, strict=True):
        if run.crash is not None:
            entry.update(passed=False, verdict=DIVERGED, fails_exit_code=True)
    document["passed"] = all(entry["passed"] for entry in document["runs"] if entry["role"] == CLAIM)
    document["check"] = check_entry(result)
    return write_document(out_dir, document, results)


def check_entry(result: CheckResult) -> dict[str, object]:
    """report.json's `check`: the layers built, the spec inferred, each layer's binding, and every run's outcome."""
    arch = result.arch
    layers = []
    for row, layer in zip(arch.rows(), arch.layers, strict=True):
        layers.append(
            {
                **row,
                "kind": layer.kind,
                "class": layer.cls_name,
                "forward": layer.methods.forward,
                "backprop": layer.methods.backprop,
                "backprop_takes_lr": layer.methods.backprop_takes_lr,
                "takes_2d_image": layer.image_input,
                "logits": layer.logits,
                "params": {
                    b.param: {"attribute": b.attribute, "shape": list(b.shape), "layout": b.layout}
                    for b in layer.params
                },
            }
        )
    return {
        "implementation": result.impl.label,
        "layers_option": format_layers(result.impl.calls) if result.impl.calls is not None else None,
        "mapping": dict(result.impl.mapping.names),
        "architecture": arch.spec.text,
        "image_shape": list(arch.spec.image_shape),
        "layers": layers,
        "found": [{"class": c.role, "member": c.member, "chosen": c.chosen, "reason": c.reason} for c in arch.found],
        "runs": [
            {
                "name": run.name,
                "verdict": run.verdict,
                "skipped": run.skipped,
                "crash": None
                if run.crash is None
                else {
                    "class": run.crash.cls,
                    "method": run.crash.method,
                    "layer": run.crash.layer,
                    "step": run.crash_step,
                    "timed_out": run.crash.timed_out,
                    "text": run.crash.detail,
                },
            }
            for run in result.runs
        ],
    }
