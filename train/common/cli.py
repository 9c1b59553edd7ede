"""Shared command-line plumbing: dataclass arguments and one-line errors for bad input (exit status 2)."""

import atexit
import os
import sys
import threading
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
        end_launched_process()
    except (InvalidInput, FileNotFoundError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        sys.exit(2)


def end_launched_process() -> None:
    """After a step that succeeded under `accelerate launch`, leave the process group and end the process without
    the interpreter's teardown. torch 2.14's gloo can abort in that teardown ("terminate called without an active
    exception", SIGABRT) even after `destroy_process_group()` returned, and the launcher then kills the other
    processes mid-save: 11 of 160 two-process exits of `tests/multiprocess/gloo_teardown.py` (whose first process
    finishes a second later) whether it exits as is, destroys the group, or meets a barrier first (PyTorch's
    abandoned PR #179291 is about this teardown); 0 of 40 ending as here, 0 of 42 launches of
    `tests/multiprocess/finishing_step.py` through this function. So, on success only, the process does what a
    normal exit does before that teardown (joins its threads, runs atexit handlers, flushes) and leaves with
    `os._exit(0)`."""
    import torch.distributed

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    uses_gloo = "gloo" in str(torch.distributed.get_backend())
    torch.distributed.destroy_process_group()
    if uses_gloo and torch.distributed.is_torchelastic_launched():  # torchrun, accelerate launch
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
