"""`cnn-parity`: one console script, one subcommand per job. Exit 0 parity, 1 divergence, 2 bad usage or input."""

from __future__ import annotations

import argparse
import faulthandler
import gc
import importlib
import sys

from parity.cli.errors import EXIT_DIVERGENCE, EXIT_USAGE, UsageError, reader_gone, silence_stdout

# subcommand -> (module implementing `add_arguments(parser)` and `run(args) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "report": (
        "reports.command",
        "run the lockstep experiment on a network spec (the tutorial's by default) and write report.md, "
        "report.json, plots",
    ),
    "check": ("parity.check.command", "check a tutorial-style implementation tensor by tensor against PyTorch"),
    "record": ("parity.golden.command", "write a golden record of the default scratch run"),
    "compare-golden": ("parity.golden.command", "rerun scratch alone and compare it with a golden record (no torch)"),
    "selftest": ("parity.check.selftest", "inject realistic bugs and show each one caught and attributed"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered; with `command`, only its options are (only its
    module is imported: a command starts sooner without the others')."""
    # No abbreviations: a typo that happens to be a prefix (`--strid`) would otherwise run as another option.
    parser = argparse.ArgumentParser(prog="cnn-parity", description=__doc__, allow_abbrev=False)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        if command is not None and name != command:
            continue
        module = importlib.import_module(module_name)
        add_arguments = getattr(module, f"add_{name.replace('-', '_')}_arguments", None) or module.add_arguments
        add_arguments(sub)
        sub.set_defaults(module=module, runner=f"run_{name.replace('-', '_')}", command_parser=sub)
    return parser


def _asks_for_help(option: str) -> bool:
    """`-h` or `--help`."""
    return option in ("-h", "--help")


def main(argv: list[str] | None = None) -> int:
    """Parse, dispatch, and turn expected errors into one clear line and exit code 2."""
    from scratch.data import DataError  # here, not at the top: NumPy, whose import `console` guards

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    if argv and argv[0].startswith("-") and not _asks_for_help(argv[0]):  # else argparse names a missing argument
        parser.error(f"unrecognized arguments: {argv[0]} (options go after the command: cnn-parity COMMAND [options])")
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # told with the command's own usage: the top-level one would not show the options it has
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    run = getattr(args.module, args.runner, None) or args.module.run
    try:
        code = run(args)
        sys.stdout.flush()  # here, not at exit: a reader gone before the last lines were written is seen below
        return code
    except BrokenPipeError as error:
        if not reader_gone():  # a pipe of the workers', say: an error like any other
            print(f"cnn-parity {args.command}: error: {error}", file=sys.stderr)
            return EXIT_USAGE
        silence_stdout()  # the reader of the output went away (`| head`): not bad usage, and nothing to say
        written = getattr(args, "written", None)
        return EXIT_DIVERGENCE if written is None else written[1]
    except MemoryError:
        print(
            f"cnn-parity {args.command}: error: out of memory: what it was asked to run needs more memory than this "
            "machine has; ask for a smaller network, batch or run (--arch, --batch-size, where it has them)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except (UsageError, DataError, OSError) as error:
        print(f"cnn-parity {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        written = getattr(args, "written", None)  # set by `errors.mark_written` once the output is complete
        if written is not None:
            path, exit_code = written
            print(f"cnn-parity {args.command}: interrupted after {path} was completely written", file=sys.stderr)
            return exit_code
        print(f"cnn-parity {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130


def console() -> int:
    """`main` as the console script runs it: the process exits right after."""
    # A crash in native code (a C extension the code under check calls, or NumPy's or torch's) ends the process
    # before any message of ours: Python's own dump then names the file and line each thread was at, where the shell
    # would otherwise say only "Segmentation fault".
    faulthandler.enable()
    try:
        code = main()
    except KeyboardInterrupt:  # while the command's modules still load (NumPy, the command's own): before it ran
        print(f"cnn-parity: interrupted before {_command_named()} started; nothing was written", file=sys.stderr)
        return 130
    # Nothing made so far needs collecting: frozen, it is not walked again by the collections the interpreter runs
    # as it shuts down (~0.3 s after torch was imported).
    gc.freeze()
    return code


def _command_named() -> str:
    """`the report command`, from the command line as given (`the command` when it names none)."""
    named = [arg for arg in sys.argv[1:2] if arg in COMMANDS]
    return f"the {named[0]} command" if named else "the command"


if __name__ == "__main__":
    sys.exit(console())
