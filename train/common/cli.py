"""Shared command-line plumbing: dataclass arguments and one-line errors for bad input (exit status 2)."""

import sys
from collections.abc import Callable

from transformers import HfArgumentParser


class InvalidInput(ValueError):
    """Bad user input (file, row, column, value). CLIs report it in one line with exit status 2, no traceback."""


def run_cli(main: Callable, *argument_classes: type, argv: list[str] | None = None,
            positional: str | None = None, defaults: dict | None = None) -> None:
    """Parse `argument_classes` with `HfArgumentParser`, call `main(*parsed)`, turn invalid input into exit 2.

    `positional` names a field that may also be given as the first bare word (`make_dataset digits`);
    `defaults` overrides dataclass defaults (e.g. TRL's bf16 default on a machine without a GPU).
    """
    parser = HfArgumentParser(argument_classes)
    parser.set_defaults(**(defaults or {}))
    argv = list(sys.argv[1:] if argv is None else argv)
    if positional and argv and not argv[0].startswith("-"):
        argv = [f"--{positional}", *argv]
    # Unknown arguments come back here instead of as HfArgumentParser's ValueError (a traceback).
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    try:
        if unknown:
            raise InvalidInput(f"unrecognized arguments: {' '.join(unknown)} (see --help)")
        main(*parsed)
    except (InvalidInput, FileNotFoundError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
