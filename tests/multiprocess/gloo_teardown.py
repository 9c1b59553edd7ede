"""Reproduces torch 2.14's gloo teardown abort that `train.common.cli.end_launched_process` avoids: two DDP
processes, the first finishing `HOLD` seconds after the second, which then exits in one of four ways.

    for i in $(seq 40); do torchrun --nproc_per_node 2 --master_port $((30000 + i)) \\
        tests/multiprocess/gloo_teardown.py MODE 1 >/dev/null 2>&1 || echo failed; done

Measured on 2 cores (torch 2.14.1, 40 launches each): `plain` 3 failed, `destroy` 5 and 1, `barrier` 2,
`destroy-exit` 0. A failure is the second process's SIGABRT ("terminate called without an active exception")
after `destroy_process_group()` has returned, while the interpreter tears down.
"""

import os
import sys
import time

import torch
import torch.distributed as dist

mode, hold = sys.argv[1], float(sys.argv[2])
dist.init_process_group("gloo")
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 64))
for _ in range(5):
    model(torch.randn(8, 64)).sum().backward()
if dist.get_rank() == 0:
    time.sleep(hold)  # as when the first process alone writes the final model
if mode == "barrier":
    dist.barrier()
if mode in ("destroy", "barrier", "destroy-exit"):
    dist.destroy_process_group()
if mode == "destroy-exit":
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
