"""Shared command-line plumbing: dataclass arguments and one-line errors for bad input (exit status 2)."""

import sys
from collections.abc import Callable

from transformers import HfArgumentParser


def with_current_checkpointing_name(arg: str, argument_classes) -> str:
    """`--gradient_checkpointing...` as `--activation_checkpointing...` where the trainer's arguments have the new
    name (transformers 5.24): the steps' defaults set the new name, which would otherwise silently win over a user's
    old-style flag (README's recipe uses `--gradient_checkpointing`, the name every supported release knows)."""
    old = "--gradient_checkpointing"
    if arg.startswith(old) and any("activation_checkpointing" in getattr(c, "__dataclass_fields__", {})
                                   for c in argument_classes):
        return "--activation_checkpointing" + arg[len(old):]
    return arg


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
    argv = [with_current_checkpointing_name(arg, argument_classes) for arg in argv]
    # Unknown arguments come back here instead of as HfArgumentParser's ValueError (a traceback).
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    try:
        if unknown:
            raise InvalidInput(f"unrecognized arguments: {' '.join(unknown)} (see --help)")
        main(*parsed)
        leave_process_group()
    except (InvalidInput, FileNotFoundError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        sys.exit(2)


def leave_process_group() -> None:
    """After a step that succeeded under `accelerate launch`, leave the process group before the interpreter exits:
    a process that exits while gloo's worker threads still hold work can abort during shutdown ("terminate called
    without an active exception", SIGABRT), and the launcher then kills the others mid-save. Only on success, as
    torchtitan does: destroying the group while other processes are still in a collective can hang."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
