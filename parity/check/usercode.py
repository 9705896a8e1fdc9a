"""Calling the user's code: its exceptions named, a time limit per call, and its printing kept off the report.

Whatever the user's method raises becomes an `ImplCrash` naming the class, the method and the layer, with the
error in one line (`MaxPool2.forward raised ValueError: ...`); the run that called it says at which step. So does a
`sys.exit()` or any other `BaseException` but Ctrl-C's. So does `os._exit`, which would end the process at once, with
the user's exit code (a 0 that CI would read as parity): while the user's code runs, it raises `ProcessExit` instead,
in the thread that runs it (another thread, or a child process the user's code forked, ends as it asks). A file that
binds `from os import _exit` when imported keeps that stand-in: it only ever runs inside such calls.

A layer method that never returns (an index that stops advancing in a `while` loop) would hang `check` for good.
`user_call` arms a one-shot interval timer (SIGALRM) around every call into the user's code; when it fires, the
handler raises `MethodTimeout` inside that code, which unwinds it. `MethodTimeout` derives from `BaseException`,
as `KeyboardInterrupt` does, so a user's `except Exception:` cannot swallow it; Ctrl-C is untouched.

The timer only interrupts Python code: a single NumPy call that runs for minutes returns first. Where there is no
SIGALRM (Windows) or `check` does not run in the main thread, calls run without a limit.

What the user's code prints (progress lines, shapes) goes to a sink instead of the terminal: the report is
`check`'s output, and a print in `forward` would put 200 lines into it.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import threading
from collections.abc import Callable

import numpy as np

DEFAULT_TIMEOUT = 30.0  # seconds per call: the tutorial's loop conv takes ~15 ms, a two-conv loop code ~0.2 s


class ImplCrash(Exception):
    """The user's code raised, returned something unusable, or did not return in time: one line.

    `cls` is the user's class, `method` the method, `layer` the spec layer it implements (`pool2`), which a crash
    blames; `timed_out` when the method did not return within its time limit.
    """

    def __init__(self, cls: str, method: str, message: str, layer: str, timed_out: bool = False) -> None:
        super().__init__(f"{cls}.{method}: {message}")
        self.cls, self.method, self.detail, self.layer, self.timed_out = cls, method, message, layer, timed_out

    @property
    def where(self) -> str:
        """`MaxPool2.forward`."""
        return f"{self.cls}.{self.method}"


def guarded(cls: str, method: str, layer: str, function: Callable, *args, timeout: float | None = DEFAULT_TIMEOUT):
    """`user_call(function, *args)` with whatever it raises, or a time-out, turned into an `ImplCrash`."""
    try:
        return user_call(function, *args, timeout=timeout)
    except MethodTimeout as stop:
        raise ImplCrash(cls, method, str(stop), layer, timed_out=True) from None
    except KeyboardInterrupt:  # Ctrl-C is the person's, not the code's
        raise
    except SystemExit as stop:  # left alone, `sys.exit(0)` in a layer would end `check` with exit 0: a pass
        raise ImplCrash(cls, method, f"called sys.exit({stop.code!r})", layer) from None
    except ProcessExit as stop:
        raise ImplCrash(cls, method, str(stop), layer) from None
    except BaseException as error:  # the user's code is arbitrary code, and may raise any BaseException
        raise ImplCrash(cls, method, f"raised {one_line(error)}", layer) from error


def returned_array(cls: str, method: str, layer: str, value: object, expected: str = "an array") -> np.ndarray:
    """A private float64 copy of what the user's method returned, or an `ImplCrash` saying why it is none: None,
    not numbers, or complex numbers (which a cast to float64 would silently cut to their real part)."""
    if value is None:
        raise ImplCrash(cls, method, f"returned None, expected {expected}", layer)
    if np.iscomplexobj(value):
        raise ImplCrash(cls, method, f"returned complex numbers ({np.asarray(value).dtype}), expected real ones", layer)
    try:
        return np.array(value, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as error:
        raise ImplCrash(cls, method, f"returned {type(value).__name__}, not an array: {error}", layer) from None


def syntax_error_text(file: object, error: SyntaxError) -> str:
    """`conv.py:12: syntax error: invalid syntax` (no line for a file that is no Python source at all)."""
    where = f"{file}:{error.lineno}" if error.lineno is not None else str(file)
    return f"{where}: syntax error: {error.msg}"


def one_line(error: BaseException) -> str:
    """`ValueError: the message`, whitespace collapsed to single spaces (a traceback never shows)."""
    try:
        text = " ".join(str(error).split())
    except Exception as unshowable:  # the user's own __str__ raised: say so rather than end in a traceback
        text = f"(its message could not be shown: {type(unshowable).__name__} in its __str__)"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class MethodTimeout(BaseException):
    """A call into the user's code ran past its time limit (a BaseException: `except Exception` does not stop it)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"did not return within {seconds:g} s")
        self.seconds = seconds


class ProcessExit(BaseException):
    """The user's code called `os._exit`, stopped so that `check` can say so rather than end with that exit code."""

    def __init__(self, code: object) -> None:
        super().__init__(f"called os._exit({code!r})")
        self.code = code


_EXIT_HOMES = tuple(module for module in (os, sys.modules.get(os.name)) if module is not None)  # os, and posix or nt


@contextlib.contextmanager
def _exit_refused():
    """`os._exit` (and its home, `posix._exit`) raises `ProcessExit` in this thread for the duration (see the
    module's doc)."""
    homes = _EXIT_HOMES
    real_exits = [module._exit for module in homes]
    real_exit, owner, thread = real_exits[0], os.getpid(), threading.get_ident()

    def refused(status: int) -> None:
        if os.getpid() != owner or threading.get_ident() != thread:  # a forked child, or another thread
            real_exit(status)
        raise ProcessExit(status)

    for module in homes:
        module._exit = refused
    try:
        yield
    finally:
        for module, saved in zip(homes, real_exits, strict=True):
            module._exit = saved


def limits_supported() -> bool:
    """Whether calls can be interrupted here: SIGALRM exists and this is the main thread."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def user_call(function: Callable, *args, timeout: float | None = DEFAULT_TIMEOUT):
    """`function(*args)`, stopped by `MethodTimeout` after `timeout` seconds (None: no limit), its prints dropped."""
    sink = io.StringIO()
    if timeout is None or not limits_supported():
        with contextlib.redirect_stdout(sink), _exit_refused():
            return function(*args)

    def expire(signum, frame):
        raise MethodTimeout(timeout)

    previous = signal.signal(signal.SIGALRM, expire)
    try:
        with contextlib.redirect_stdout(sink), _exit_refused():
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                return function(*args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
