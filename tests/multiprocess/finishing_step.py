"""Test harness: the smallest step that trains under `accelerate launch` and ends through `run_cli`, as every
`python -m train.<step>` does; the first process finishes `--hold` seconds after the others (as when it alone writes
the final model). Run: accelerate launch --multi_gpu --num_processes 2 tests/multiprocess/finishing_step.py --hold 1
"""

import time
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from train.common.cli import run_cli


@dataclass
class FinishingArguments:
    hold: float = 1.0


def main(args: FinishingArguments) -> None:
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(64, 64))  # DistributedDataParallel over gloo
    for _ in range(5):
        accelerator.backward(model(torch.randn(8, 64)).sum())
    if accelerator.is_main_process:
        time.sleep(args.hold)


if __name__ == "__main__":
    run_cli(main, FinishingArguments)
