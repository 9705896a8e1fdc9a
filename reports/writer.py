"""Writing a report directory atomically: every file or none.

The report is built in a hidden temporary directory next to the destination and then moved into place with one
rename (an atomic exchange on Linux when the destination already exists). An interrupt or error at any point leaves
either the previous complete report or no directory at all; the temporary directory is removed.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from reports import environment, jsondoc, markdown, plots

if TYPE_CHECKING:  # torch-free at import time: parity.experiment imports the reference (torch)
    from parity.experiment import ExperimentConfig, ExperimentResult

REPORT_MD, REPORT_JSON = "report.md", "report.json"


def check_destination(out_dir: Path) -> None:
    """Refuse (OSError, one clear message) a destination that is not new, empty, or a previous report."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise NotADirectoryError(f"{out_dir} exists and is not a directory; pass a new directory for the report")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_report_dir(out_dir):
        raise FileExistsError(
            f"{out_dir} is not empty and holds no cnn-parity report (no {REPORT_JSON} with schema "
            f"{jsondoc.SCHEMA!r}); refusing to replace it - pass a new directory for the report"
        )


def _is_report_dir(path: Path) -> bool:
    try:
        schema = json.loads((path / REPORT_JSON).read_text(encoding="utf-8")).get("schema", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(schema, str) and schema.startswith("cnn-parity/report/")


def slug(config: ExperimentConfig) -> str:
    """`float64-first-stable`: the run's name as a file-name part."""
    return re.sub(r"[^A-Za-z0-9]+", "-", config.name).strip("-")


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
) -> dict[str, object]:
    """The report.json document for `results` (see `write_report` for what counts as a parity claim)."""
    results = list(results)
    if demonstrations is None:
        claims = [r.config.expects_parity for r in results]
    else:
        claims = [r.config not in demonstrations for r in results]
    slugs = _unique_slugs(results)
    plot_names = [{"loss": f"loss-{s}.png", "errors": f"errors-{s}.png"} for s in slugs]
    env = environment.collect(
        dtypes=sorted({r.config.dtype for r in results}), seeds=sorted({r.config.seed for r in results})
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
    )


def write_document(
    out_dir: str | os.PathLike, document: dict[str, object], results: Sequence[ExperimentResult]
) -> Path:
    """Write `document` (from `build_document(results, ...)`) with its markdown and plots; return report.md's path."""
    out_dir = Path(out_dir)
    check_destination(out_dir)
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=parent))
    try:
        for result, run in zip(results, document["runs"], strict=True):
            for kind, name in run["plots"].items():
                draw = {"loss": plots.loss_plot, "errors": plots.error_plot}[kind]
                draw(result, staging / name)
        text = jsondoc.to_json(document)
        _write_text(staging / REPORT_JSON, text)
        # Rendered from the JSON text itself, so a saved report.json re-renders exactly this report.md.
        _write_text(staging / REPORT_MD, markdown.render(json.loads(text)))
        _make_visible(staging)
        _move_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a swap it holds the previous report
    return out_dir / REPORT_MD


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _make_visible(staging: Path) -> None:
    """mkdtemp makes the directory private (0700); give it the permissions a plain mkdir would."""
    os.chmod(staging, 0o777 & ~_umask())


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, briefly, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Rename `staging` to `out_dir`; if `out_dir` exists, swap the two (old report ends up in `staging`)."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    if _exchange(staging, out_dir):
        return
    # No atomic exchange here: move the old report aside, the new one in, and put the old one back on failure.
    aside = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    os.rmdir(aside)
    os.rename(out_dir, aside)
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(aside, out_dir)
        raise
    os.rename(aside, staging)  # so the caller's cleanup removes it


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically: renameat2(RENAME_EXCHANGE), Linux >= 3.15 and glibc >= 2.28; False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
