"""Writing files and directories atomically: all of it or nothing, never a half-written file in place.

A file or a directory is built under a hidden temporary name next to its destination and moved into place with one
rename (for a directory that already exists, an atomic exchange on Linux). An interrupt or error at any point
leaves the previous complete version or nothing; the temporary is removed. Hidden temporaries are named
`.NAME.PID.*.partial` / `.NAME.PID.*.tmp` after the process that made them: the next write to the same place removes
those a killed run left (their process is gone).

A destination is checked before any work (`check_creatable`), and a failure to write is reported as an
`OutputError`: one line naming the destination and the problem in words, never a temporary's name.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEMPORARY_SUFFIXES = (".partial", ".tmp", ".old", ".probe")
MIN_FREE_BYTES = 4 << 20  # the default report (Markdown, JSON, six PNGs) is ~1.7 MB; a golden record ~50 KB


class OutputError(OSError):
    """A destination that cannot be written: the message names it and says what is wrong, in words."""


@contextlib.contextmanager
def directory(out_dir: Path) -> Iterator[Path]:
    """Yield a staging directory to fill; on success it replaces `out_dir` in one rename (or exchange)."""
    out_dir = Path(out_dir)
    with _reported(out_dir):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(out_dir)
        staging = Path(tempfile.mkdtemp(prefix=_prefix(out_dir), suffix=".partial", dir=out_dir.parent))
        try:
            yield staging
            _make_visible(staging)
            move_into_place(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # after a swap it holds the previous version


def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file renamed into place."""
    path = Path(path)
    with _reported(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private (0600); give it a plain file's mode
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return path


def check_creatable(path: Path, what: str, *, directory: bool) -> None:
    """Refuse (OutputError) a destination that cannot be made: under a file, a directory where a file goes (or the
    reverse), read-only, not permitted, or on a full file system. Creates nothing (a probe is made and removed)."""
    path = Path(path)
    try:
        if directory and path.exists() and not path.is_dir():
            raise OutputError(f"cannot write {what} to {path}: it is a file; pass a directory")
        if directory and path.is_dir() and os.path.ismount(path):  # a new version replaces it by a rename
            raise OutputError(
                f"cannot write {what} to {path}: it is a mount point, which cannot be replaced; pass a new "
                f"directory inside it ({path / 'report'})"
            )
        if not directory and path.is_dir():
            raise OutputError(f"cannot write {what} to {path}: it is a directory; pass a file name inside it")
        existing = path.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise OutputError(f"cannot write {what} to {path}: {existing} is a file, so nothing can be made under it")
        trial = tempfile.mkdtemp(prefix=_prefix(path), suffix=".probe", dir=existing)
        os.rmdir(trial)
        free = os.statvfs(existing)
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(f"cannot write {what} to {path}: {describe(error, existing_or(path))}") from None
    if free.f_bavail * free.f_frsize < MIN_FREE_BYTES:
        available = free.f_bavail * free.f_frsize
        raise OutputError(f"cannot write {what} to {path}: the file system is full ({available:,} bytes free)")


def existing_or(path: Path) -> Path:
    """The nearest of `path`'s parents that exists (for messages), or `path` itself when none can be found."""
    parent = Path(path).parent
    try:
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
    except OSError:
        return Path(path)
    return parent


def describe(error: OSError, where: Path) -> str:
    """An OSError in words, naming `where` (the destination or its parent), not the temporary that met it."""
    known = {
        errno.EROFS: f"{where} is on a read-only file system",
        errno.EACCES: f"permission denied: {where} cannot be written to",
        errno.EPERM: f"not permitted: {where} cannot be written to",
        errno.ENOSPC: f"no space left on the file system holding {where}",
        errno.EDQUOT: f"disk quota exceeded on the file system holding {where}",
        errno.ENOTDIR: f"a part of {where} is a file, not a directory",
        errno.ENAMETOOLONG: "the name is too long",
        errno.ENOENT: f"{where} cannot hold new files (it does not exist, or takes none)",
        errno.EEXIST: f"{where} already exists",
    }
    return known.get(error.errno, f"{(error.strerror or str(error)).lower()} ({where})")


def remove_stale(path: Path) -> list[Path]:
    """Remove the hidden temporaries of `path` that a killed run left (their process is gone); return them."""
    path = Path(path)
    removed = []
    prefix = f".{path.name}."
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(TEMPORARY_SUFFIXES)):
            continue
        owner = name[len(prefix) :].split(".", 1)[0]
        if owner.isdigit() and _alive(int(owner)):
            continue  # a run writing here now
        stale = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


def _prefix(path: Path) -> str:
    """A temporary's name prefix: hidden, after its destination, then this process's id (see `remove_stale`)."""
    return f".{path.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def _reported(destination: Path) -> Iterator[None]:
    """Turn an OSError met while writing `destination` into an OutputError naming it (not its temporary)."""
    try:
        yield
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(f"cannot write {destination}: {describe(error, existing_or(destination))}") from None


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
    aside = Path(tempfile.mkdtemp(prefix=_prefix(out_dir), suffix=".old", dir=out_dir.parent))
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
