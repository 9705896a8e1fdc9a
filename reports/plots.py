"""The report's figures, drawn with matplotlib's Agg backend (explicitly: no display, no pyplot global state).

- `loss_plot`: the training loss of both sides over the steps, overlaid (per step, faint; 100-step mean, bold).
- `error_plot`: log10 of each tensor's max |scratch - reference| over the steps, one panel per phase of a step
  (forward, backward, parameters after the update), with the run's own spec-named tensors.

Every number drawn comes from the lockstep record (the comparison engine); nothing is recomputed here.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from parity.engine.tolerances import tolerance_for

if TYPE_CHECKING:  # for annotations only: loading this module loads no part of the experiment
    from matplotlib.figure import Figure

    from parity.lockstep.experiment import ExperimentResult

WINDOW = 100  # the tutorial reports the mean loss of every 100 steps
MAX_POINTS = 600  # steps are binned (max per bin) beyond this many, so lines stay readable
GROUPS = (  # (phase of `TensorInfo`, panel title)
    ("forward", "forward pass"),
    ("backward", "backward pass (gradients)"),
    ("update", "parameters after the SGD update"),
)
# Beyond the colors, a deep spec's tensors are told apart by line style.
TENSOR_STYLES = ("-", "--", "-.")
SCRATCH_STYLE = {"color": "tab:blue", "linestyle": "-"}
REFERENCE_STYLE = {"color": "tab:orange", "linestyle": (0, (4, 3))}
DPI = 110
MAX_LISTED_FLIPS = 5  # flip steps named one by one in a legend
# Red is kept for the first-divergence marker, black for the tolerance line.
TENSOR_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:cyan", "tab:olive")


def new_figure(**options: object) -> Figure:
    """A matplotlib Figure with an Agg canvas (imported on first use, see `import_matplotlib`)."""
    import_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**options)
    FigureCanvasAgg(figure)
    return figure


def import_matplotlib(note: bool = True) -> None:
    """Import matplotlib. A bogus MPLBACKEND makes that raise, although the report draws with Agg whatever it says:
    it is replaced by Agg, with one note on stderr unless `note` is false (matplotlib reads it once, at its
    import)."""
    if "matplotlib" in sys.modules:
        return
    try:
        import matplotlib  # noqa: F401
    except ValueError as error:
        bogus = os.environ.get("MPLBACKEND")
        if bogus is None or "backend" not in str(error):
            raise
        os.environ["MPLBACKEND"] = "agg"
        for name in [name for name in sys.modules if name.split(".")[0] == "matplotlib"]:
            del sys.modules[name]  # the half-imported package: imported again below, whole
        if note:
            print(
                f"cnn-parity: MPLBACKEND={bogus!r} is not a matplotlib backend; drawing the plots with the file "
                "backend Agg instead",
                file=sys.stderr,
            )
        import matplotlib  # noqa: F401


def warm_up() -> None:
    """Draw and save a tiny figure, and throw it away: the first figure a process draws also loads the fonts and
    fills matplotlib's text-layout caches, which made the first error panel about twice as slow as the next. A
    process that is idle anyway (the report's, while its workers start) calls this so its plots later start warm;
    nothing of it reaches a figure drawn after (tested: the same PNG bytes)."""
    figure = new_figure(figsize=(2, 2))
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], label="warm-up")
    axes.set_title("warm-up")
    axes.legend()
    _save(figure, io.BytesIO())


def _save(figure: Figure, path: Path | BinaryIO) -> None:
    """Lay `figure` out (tight) and write it as PNG. Laid out here, once: `Figure.tight_layout` leaves a placeholder
    layout engine behind, for which `savefig` draws the whole figure once more, unseen, before drawing it (the same
    PNG bytes either way: tested)."""
    from matplotlib.layout_engine import TightLayoutEngine

    TightLayoutEngine().execute(figure)
    figure.savefig(path, format="png", dpi=DPI)


def _steps_per_epoch(result: ExperimentResult) -> int:
    epochs = max(int(result.config.epochs), 1)
    return len(result.record.steps) // epochs if len(result.record.steps) % epochs == 0 else 0


def _mark_epochs(axes, result: ExperimentResult) -> None:
    per_epoch = _steps_per_epoch(result)
    if per_epoch:
        for boundary in range(per_epoch, len(result.record.steps), per_epoch):
            axes.axvline(boundary, color="0.6", linewidth=0.8, linestyle=":")


def _mark_divergence(axes, result: ExperimentResult) -> None:
    divergence = result.record.first_divergence
    if divergence is not None:
        axes.axvline(
            divergence.step, color="tab:red", linewidth=1.2, label=f"first divergence (step {divergence.step})"
        )


def _mark_flips(axes, result: ExperimentResult) -> None:
    """Steps whose near-tie routing flip was explained (and after which scratch was re-synchronised)."""
    steps = [step.step for step in result.record.steps if step.flipped]
    if not steps:
        return
    if len(steps) > MAX_LISTED_FLIPS:  # a legend entry listing hundreds of steps would push the panels off the page
        label = f"explained near-tie flips ({len(steps):,} steps, {steps[0]} to {steps[-1]})"
    else:
        label = f"explained near-tie flip (step{'s' if len(steps) > 1 else ''} {', '.join(map(str, steps))})"
    many = len(steps) > MAX_LISTED_FLIPS  # then faint, so the error lines stay visible through them
    # One collection of full-height lines, as axvline draws them one artist each: with hundreds of flips (float32
    # under some OpenBLAS kernels) an artist per line took most of the plot's time.
    axes.vlines(
        steps,
        0,
        1,
        transform=axes.get_xaxis_transform(),  # x in steps, y from the bottom of the panel to its top
        colors="0.35",
        linewidths=0.5 if many else 1.0,
        alpha=0.35 if many else 1.0,
        linestyles="--",
        label=label,
    )


def _moving_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to `window` steps (shorter at the start); NaN where any value in it is NaN."""
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def loss_plot(result: ExperimentResult, path: Path | BinaryIO) -> None:
    """Training loss of scratch and reference over the steps (trailing 100-step mean), overlaid."""
    steps = result.record.steps
    x = np.arange(len(steps))
    figure = new_figure(figsize=(10, 5.5))
    axes = figure.add_subplot()
    top = 0.0
    for side, style in (("scratch", SCRATCH_STYLE), ("reference", REFERENCE_STYLE)):
        losses = np.array([getattr(s, f"{side}_loss") for s in steps], dtype=np.float64)
        losses[~np.isfinite(losses)] = np.nan
        mean = _moving_mean(losses, WINDOW)
        axes.plot(x, mean, linewidth=2.4 if side == "scratch" else 1.8, label=side, **style)
        if np.isfinite(mean).any():
            top = max(top, float(np.nanmax(mean)))
    _mark_epochs(axes, result)
    _mark_divergence(axes, result)
    per_epoch = _steps_per_epoch(result)
    epochs = result.config.epochs
    epochs = f", {epochs} epoch{'s' if epochs > 1 else ''} of {per_epoch:,} steps" if per_epoch else ""
    axes.set_title(
        f"Training loss, scratch vs PyTorch reference: {result.config.name}{epochs}\n{result.record.spec.text}"
    )
    batch = result.config.batch_size
    per_step = "one image" if batch == 1 else f"a batch of {batch} images"
    axes.set_xlabel(f"training step ({per_step} per SGD step; dotted lines: epoch boundaries)")
    mean_of = "" if batch == 1 else " (each step: its batch's mean)"
    axes.set_ylabel(f"cross-entropy loss{mean_of}, mean of the last {WINDOW} steps")
    axes.set_xlim(0, max(len(steps) - 1, 1))
    axes.set_ylim(0, 1.1 * top if top > 0 else 1)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper right")
    test = result.test
    if test:
        axes.text(
            0.01,
            0.03,
            "test: "
            + ";  ".join(
                f"{side} loss {test[side]['loss']:.4f}, accuracy {100 * test[side]['accuracy']:.1f}%"
                for side in ("scratch", "reference")
            ),
            transform=axes.transAxes,
            fontsize=9,
            bbox={"facecolor": "white", "edgecolor": "0.7", "alpha": 0.9},
        )
    _save(figure, path)


def _binned_max(steps: np.ndarray, values: np.ndarray, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Max of `values` per bin of steps when there are more than MAX_POINTS steps (NaNs ignored).

    Step 0 is always its own point: it is where a definitional difference (the tie policy) shows alone.
    """
    if n_steps <= MAX_POINTS or len(steps) == 0:
        return steps, values
    width = int(np.ceil(n_steps / MAX_POINTS))
    bins = np.where(steps == 0, -1, (steps - 1) // width)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(bins)) + 1])
    # fmax ignores NaN: a bin is NaN only when all of it is; an inf is drawn as a gap, as a NaN is (`error_plot`).
    return steps[starts], np.fmax.reduceat(values, starts)


def error_series(result: ExperimentResult) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each tensor: the steps at which it was compared and its max |Δ| there (from the comparisons)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for step in result.record.steps:
        for c in step.comparisons:
            steps, errors = series.setdefault(c.name, ([], []))
            steps.append(step.step)
            errors.append(c.max_abs_error)
    return {name: (np.array(s), np.array(e, dtype=np.float64)) for name, (s, e) in series.items()}


def tensor_groups(result: ExperimentResult) -> list[tuple[str, list[str]]]:
    """(panel title, tensor names in comparison order) per phase of a step, from the run's spec."""
    tensors = result.record.spec.tensors
    return [(title, [info.name for info in tensors if info.phase == phase]) for phase, title in GROUPS]


def error_plot(result: ExperimentResult, path: Path | BinaryIO) -> None:
    """log10 max |scratch - reference| of every tensor over the steps, one panel per phase of a step."""
    series = error_series(result)
    n_steps = len(result.record.steps)
    groups = tensor_groups(result)
    figure = new_figure(figsize=(10, 10))
    panels = figure.subplots(len(GROUPS), 1, sharex=True)
    atol = tolerance_for(result.config.dtype).atol
    binned = n_steps > MAX_POINTS
    for axes, (group, names) in zip(panels, groups, strict=True):
        drawn = 0
        for color_index, name in enumerate(names):
            if name not in series:
                continue
            steps, errors = _binned_max(*series[name], n_steps)
            with np.errstate(divide="ignore", invalid="ignore"):
                logs = np.log10(errors)  # exact agreement (0) -> -inf: left as a gap
            logs[~np.isfinite(logs)] = np.nan
            color = TENSOR_COLORS[color_index % len(TENSOR_COLORS)]
            style = TENSOR_STYLES[(color_index // len(TENSOR_COLORS)) % len(TENSOR_STYLES)]
            axes.plot(steps, logs, linewidth=0.9, color=color, linestyle=style, label=name)
            if len(steps) and steps[0] == 0:
                axes.plot(steps[:1], logs[:1], marker="o", markersize=4, color=color)
            drawn += 1
        axes.axhline(np.log10(atol), color="black", linewidth=1, linestyle=":", label=f"atol {atol:.0e}")
        _mark_divergence(axes, result)
        _mark_flips(axes, result)
        _mark_epochs(axes, result)
        axes.set_title(group, fontsize=10, loc="left")
        axes.set_ylabel("log10 max |Δ|")
        axes.grid(True, alpha=0.3)
        if drawn or result.record.first_divergence is not None:
            axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    bin_note = f" (max over bins of {int(np.ceil(n_steps / MAX_POINTS))} steps)" if binned else ""
    panels[-1].set_xlabel(f"training step{bin_note}; dots: step 0; gaps: exact agreement (|Δ| = 0)")
    panels[-1].set_xlim(-0.01 * n_steps, max(n_steps - 1, 1))
    figure.suptitle(
        f"Largest |scratch - reference| per tensor: {result.config.name} ({result.record.spec.text})\n"
        f"tolerance per element: {tolerance_for(result.config.dtype).describe()}"
        + (f"; per-sample gradients (d_in, d_out): atol / {batch}" if (batch := result.config.batch_size) > 1 else ""),
        fontsize=11,
    )
    _save(figure, path)


PLOTS = {"loss": loss_plot, "errors": error_plot}  # kind -> drawing function, in the report's order


def render(kind: str, result: ExperimentResult) -> bytes:
    """One plot of a run as PNG bytes: what a worker process can draw beside the others."""
    buffer = io.BytesIO()
    PLOTS[kind](result, buffer)
    return buffer.getvalue()
