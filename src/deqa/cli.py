"""The ``deqa`` command line: thin front doors over the library, the same code the stages run.

Each sub-command ``NAME`` is the module ``deqa.commands.NAME``, which defines
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code) and does only argument parsing
and printing; the work is done by the library modules. A command's module is imported only when
that command runs, so ``deqa --help`` stays fast.

Options every command takes (before or after the command name):

* ``-v/--verbose`` (debug log lines), ``-q/--quiet`` (warnings and errors only; ``-qq``: errors
  only). By default ``deqa`` log lines at INFO and above go to stderr: ``message`` for INFO,
  ``warning: message`` / ``error: message`` above. Other libraries log at WARNING and above,
  and their ``FutureWarning``/``DeprecationWarning`` noise is hidden unless ``-v``.
* ``--debug``: an unexpected error shows its traceback. Without it, any error is one line,
  ``error: <what>: <reason>``, and the exit code is 2 (130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

# command -> one-line help; the module is deqa.commands.<command>
COMMANDS = {
    "validate": "check a label file and its images with the validation suite",
    "labels": "print the soft-label discretisation table of a label file",
    "score": "score images with a trained model",
    "launch": "start N processes (ranks) of a stage script or a deqa command, on CPUs or GPUs",
    "serve": "serve a trained model over HTTP (POST /score, micro-batched; the serve extra)",
    "export": "merge a LoRA adapter into its base model and save a checkpoint",
    "gate": "CI check: metrics reproduce the committed ones and SRCC does not regress",
    "report": "write the pipeline report, or with --experiments the DVC experiments page",
}
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def command_module(name: str):
    """The module implementing command ``name`` (``deqa.commands.<name>``)."""
    return importlib.import_module(f"deqa.commands.{name}")


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("output and logging (any command)")
    g.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log lines (debug level)")
    g.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=argparse.SUPPRESS,
        help="fewer log lines: warnings and errors only (-qq: errors only); no progress bars",
    )
    g.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an unexpected error"
    )
    return common


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="deqa",
        parents=[common],
        description="DeQA-Score image-quality scoring with vision-language models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        if name == command:
            command_module(name).add_arguments(p)
    return parser


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.ERROR:
            return f"error: {text}"
        if record.levelno >= logging.WARNING:
            return f"warning: {text}"
        return text


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is at the time of each record."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


_HANDLER: logging.Handler | None = None


def configure_logging(verbose: int = 0, quiet: int = 0) -> int:
    """Send ``deqa`` log records to stderr at the chosen level; returns that level."""
    global _HANDLER
    level = logging.DEBUG if verbose else {0: logging.INFO, 1: logging.WARNING}.get(quiet, logging.ERROR)
    logger = logging.getLogger("deqa")
    if _HANDLER is not None:
        logger.removeHandler(_HANDLER)
    _HANDLER = _StderrHandler()
    _HANDLER.setFormatter(_Formatter())
    logger.addHandler(_HANDLER)
    logger.setLevel(level)
    logger.propagate = False
    # other libraries: warnings and errors (INFO with -v), on the current stderr
    root = _StderrHandler()
    root.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, force=True, handlers=[root])
    for handler in logging.getLogger().handlers:  # libraries that set their own loggers to INFO
        handler.setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
    return level


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message (or type), whitespace collapsed."""
    text = " ".join(str(exc).split())
    return text if text and not isinstance(exc, (KeyError, AttributeError)) else f"{type(exc).__name__}: {text}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    args.verbose, args.quiet, args.debug = getattr(args, "verbose", 0), getattr(args, "quiet", 0), debug
    configure_logging(args.verbose, args.quiet)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(command_module(args.command).run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            raise
        print(f"error: {one_line(exc)} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
