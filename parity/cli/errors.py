"""The command line's error type and exit codes: a leaf module every command imports, importing nothing back."""

EXIT_PARITY, EXIT_DIVERGENCE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad options or unusable input: reported in one line, exit code 2."""


def mark_written(args: object, path: object, exit_code: int) -> None:
    """Note on the parsed options that the command's output `path` is complete: an interrupt (Ctrl-C) from now on
    is not a failure, and the command exits with `exit_code`, as it would have."""
    args.written = (str(path), exit_code)
