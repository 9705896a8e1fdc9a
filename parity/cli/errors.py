"""The command line's error type and exit codes: a leaf module every command imports, importing nothing back."""

import os
import select
import sys

EXIT_PARITY, EXIT_DIVERGENCE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad options or unusable input: reported in one line, exit code 2."""


def mark_written(args: object, path: object, exit_code: int) -> None:
    """Note on the parsed options that the command's output `path` is complete: an interrupt (Ctrl-C) from now on
    is not a failure, and the command exits with `exit_code`, as it would have."""
    args.written = (str(path), exit_code)


def reader_gone() -> bool:
    """Whether the reader of stdout went away (`| head` exited): a pipe whose read end is closed polls as an
    error. Any other broken pipe (a worker's) is no reason to go quiet."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll on this platform, or no real stdout
        return False


def silence_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit does not fail a second time once its reader is gone."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
