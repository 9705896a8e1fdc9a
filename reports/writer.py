"""Writing a report directory: report.json, the report.md rendered from it, and the plots, all or nothing
(`parity.atomic.directory`)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from parity import atomic
from reports import environment, jsondoc, markdown, plots

if TYPE_CHECKING:  # for annotations only: loading this module loads no part of the experiment
    from parity.lockstep.experiment import ExperimentConfig, ExperimentResult

REPORT_MD, REPORT_JSON = "report.md", "report.json"


def check_destination(out_dir: Path, option: str = "--out") -> None:
    """Refuse (OSError, one clear message naming `option`, the command line's name for it) a destination that is not
    new, empty, or a previous report, or that cannot be created there (under a file, read-only, not permitted,
    full): before any work, not after."""
    if not str(out_dir).strip():
        raise atomic.OutputError(f"{option}: empty; pass a new directory for the report")
    out_dir = Path(out_dir)
    if _holds_working_directory(out_dir):
        raise atomic.OutputError(
            f"{option} {out_dir}: the working directory or one above it; a report replaces its whole directory, so "
            f"pass a new one, such as {out_dir / 'report'}"
        )
    try:
        link = out_dir.is_symlink()
        not_a_directory = link or (out_dir.exists() and not out_dir.is_dir())
        present = sorted(entry.name for entry in out_dir.iterdir()) if out_dir.is_dir() and not not_a_directory else []
        written = _report_files(out_dir) if present else None
    except OSError as error:  # e.g. a name too long, or a parent that cannot be read
        where = atomic.existing_or(out_dir)
        raise atomic.OutputError(f"cannot write the report to {out_dir}: {atomic.describe(error, where)}") from None
    if link:  # even to a previous report: replacing the directory whole would replace the link, not its target
        raise NotADirectoryError(
            f"{out_dir} is a symbolic link (to {os.readlink(out_dir)}); a report replaces its directory whole, so "
            "pass the directory itself, or a new one"
        )
    if not_a_directory:
        raise NotADirectoryError(f"{out_dir} exists and is not a directory; pass a new directory for the report")
    if present and written is None:
        raise FileExistsError(
            f"{out_dir} is not empty and holds no cnn-parity report (no {REPORT_JSON} with schema "
            f"{jsondoc.SCHEMA!r}); refusing to replace it - pass a new directory for the report"
        )
    others = [name for name in present if name not in written]
    if others:  # replacing the directory would delete them
        raise FileExistsError(
            f"{out_dir} holds a previous report and files it did not write ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}); replacing it would delete them - move them, or pass a new "
            "directory for the report"
        )
    atomic.check_creatable(out_dir, "the report", directory=True)


def _holds_working_directory(path: Path) -> bool:
    """Whether `path` is the working directory or one of its parents, however it is written (`.`, `..`, absolute)."""
    try:
        working = Path.cwd()
    except OSError:  # a working directory since deleted: nothing of it to protect
        return False
    return Path(os.path.realpath(path)) in (working, *working.parents)  # realpath: a symlink loop does not raise


def _report_files(path: Path) -> set[str] | None:
    """The files the report in `path` wrote: its Markdown, its JSON and the plots its runs name; None when `path`
    holds no cnn-parity report."""
    try:
        document = json.loads((path / REPORT_JSON).read_text(encoding="utf-8"))
        schema = document.get("schema", "")
        plots = [name for run in document.get("runs", []) for name in (run.get("plots") or {}).values()]
    except (OSError, ValueError, AttributeError, TypeError, RecursionError):
        return None
    if not (isinstance(schema, str) and schema.startswith("cnn-parity/report/")):
        return None
    return {REPORT_MD, REPORT_JSON} | {name for name in plots if isinstance(name, str)}


MAX_SLUG = 100  # a file name may have 255 bytes; a run named by a long spec would pass that in its plots' names


def slug(config: ExperimentConfig) -> str:
    """`float64-first-stable`: the run's name as a file-name part; a long one cut short, with a digest of the whole
    name so that two runs whose names differ past the cut stay apart."""
    text = re.sub(r"[^A-Za-z0-9]+", "-", config.name).strip("-")
    if len(text) <= MAX_SLUG:
        return text
    digest = hashlib.sha256(config.name.encode()).hexdigest()[:12]
    return f"{text[: MAX_SLUG - len(digest) - 1].rstrip('-')}-{digest}"


def _unique_slugs(results: Sequence[ExperimentResult]) -> list[str]:
    slugs: list[str] = []
    for result in results:
        base = candidate = slug(result.config)
        suffix = 2
        while candidate in slugs:
            candidate, suffix = f"{base}-{suffix}", suffix + 1
        slugs.append(candidate)
    return slugs


def write_report(
    out_dir: str | os.PathLike,
    results: Sequence[ExperimentResult],
    *,
    title: str,
    command: str,
    data_source: str = "",
    demonstrations: Collection[ExperimentConfig] | None = None,
) -> Path:
    """Write report.md, report.json and the PNGs for `results` into `out_dir`, atomically; return report.md's path.

    A run is a parity claim unless its config is in `demonstrations` (default: the configs that do not use
    PyTorch's semantics, `not config.expects_parity`). Results may lack `progress` and `test` (e.g. from
    `cnn-parity check`); those sections are then left out.
    """
    document = build_document(
        results, title=title, command=command, data_source=data_source, demonstrations=demonstrations
    )
    return write_document(out_dir, document, results)


def build_document(
    results: Sequence[ExperimentResult],
    *,
    title: str,
    command: str,
    data_source: str = "",
    demonstrations: Collection[ExperimentConfig] | None = None,
    facts: Sequence[dict[str, object]] | None = None,
    run_environment: dict[str, object] | None = None,
) -> dict[str, object]:
    """The report.json document for `results` (see `write_report` for what counts as a parity claim); `facts`:
    each run's `jsondoc.run_facts`, when worked out already (by the workers); `run_environment`: the threads and
    PyTorch the runs were made with (`environment.run_environment`), when not in this process."""
    results = list(results)
    if demonstrations is None:
        claims = [r.config.expects_parity for r in results]
    else:
        claims = [r.config not in demonstrations for r in results]
    slugs = _unique_slugs(results)
    plot_names = [{"loss": f"loss-{s}.png", "errors": f"errors-{s}.png"} for s in slugs]
    env = environment.collect(
        dtypes=sorted({r.config.dtype for r in results}),
        seeds=sorted({r.config.seed for r in results}),
        runs=run_environment,
    )
    return jsondoc.build_document(
        results,
        claims=claims,
        slugs=slugs,
        plots=plot_names,
        title=title,
        command=command,
        data_source=data_source,
        environment=env,
        facts=facts,
    )


def write_document(
    out_dir: str | os.PathLike,
    document: dict[str, object],
    results: Sequence[ExperimentResult],
    drawn: Sequence[dict[str, bytes]] | None = None,
) -> Path:
    """Write `document` (from `build_document(results, ...)`) with its markdown and plots; return report.md's path.
    `drawn`: each run's plots already rendered by kind (`plots.render`, e.g. by worker processes), else drawn here."""
    out_dir = Path(out_dir)
    check_destination(out_dir)
    with atomic.directory(out_dir) as staging:
        for index, (result, run) in enumerate(zip(results, document["runs"], strict=True)):
            for kind, name in run["plots"].items():
                if drawn is not None:
                    (staging / name).write_bytes(drawn[index][kind])
                else:
                    plots.PLOTS[kind](result, staging / name)
        text = jsondoc.to_json(document)
        atomic.write_text(staging / REPORT_JSON, text)
        # Rendered from the JSON text itself, so a saved report.json re-renders exactly this report.md.
        atomic.write_text(staging / REPORT_MD, markdown.render(json.loads(text)))
    return out_dir / REPORT_MD
