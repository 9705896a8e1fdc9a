"""Writing files and directories atomically: all of it or nothing, never a half-written file in place.

A file or a directory is built under a hidden temporary name next to its destination and moved into place with one
rename (for a directory that already exists, an atomic exchange on Linux). An interrupt or error at any point
leaves the previous complete version or nothing; the temporary is removed. Hidden temporaries left by a killed run
are named `.NAME.*.partial` / `.NAME.*.tmp`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def directory(out_dir: Path) -> Iterator[Path]:
    """Yield a staging directory to fill; on success it replaces `out_dir` in one rename (or exchange)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        yield staging
        _make_visible(staging)
        move_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a swap it holds the previous version


def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> None:
    """Write `text` as UTF-8 and flush it to disk (fsync), so a rename after it publishes a complete file."""
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


def move_into_place(staging: Path, out_dir: Path) -> None:
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
