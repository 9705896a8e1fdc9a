"""The command line's error type and exit codes: a leaf module every command imports, importing nothing back."""

EXIT_PARITY, EXIT_DIVERGENCE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad options or unusable input: reported in one line, exit code 2."""
