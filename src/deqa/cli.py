"""The ``deqa`` command line: thin front doors over the library, the same code the stages run.

Each sub-command lives in the library module that implements it; that module defines
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code). Modules are imported only
when their command runs, so ``deqa --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help)
COMMANDS = {
    "validate": ("deqa.validation", "check a label file and its images with the validation suite"),
    "labels": ("deqa.labels", "print the soft-label discretisation table of a label file"),
    "score": ("deqa.scoring", "score images with a trained model"),
    "export": ("deqa.export", "merge a LoRA adapter into its base model and save a checkpoint"),
    "gate": ("deqa.gate", "CI check: metrics reproduce the committed ones and SRCC does not regress"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deqa",
        description="DeQA-Score image-quality scoring with vision-language models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
