"""The ``deqa`` sub-commands: argument parsing and printing only, over the library modules.

Each module here defines ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code) for
one sub-command; the logic they call lives in the library modules (``deqa.scoring``,
``deqa.validation``, ``deqa.labels``, ``deqa.export``, ``deqa.gate``).
"""
