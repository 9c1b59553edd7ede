"""Test harness: a training step under a shipped accelerate config on CPU processes (gloo), recording what trained.

    accelerate launch --config_file configs/accelerate/fsdp2.yaml --num_processes 2 --mixed_precision no \\
        tests/multiprocess/cpu_launch.py train.align --model_name_or_path ... [the step's flags]

accelerate 1.15 promotes a launch to FSDP only on accelerator devices: `AcceleratorState.__init__` switches the
distributed type to FSDP inside a branch listing MULTI_GPU, NPU, XPU, HPU, ... but not MULTI_CPU, so on a machine
without a GPU an FSDP2 config quietly trains with DDP (no error; parameters are plain tensors). This harness makes
that one promotion for MULTI_CPU, then runs the step as `python -m` would, so the trainer, TRL and the model go
through the same FSDP2 code as on GPUs (`fully_shard`, DTensor parameters, sharded checkpoints). DeepSpeed needs
no help (its CPU accelerator talks gloo). After training each process writes what it trained with to
`$SIGPHI_LAUNCH_REPORT-<rank>.json`: the distributed type, DTensor parameters (FSDP2), parameters partitioned by
ZeRO-3 and the ZeRO stage. With `$SIGPHI_HOLD_AFTER_CHECKPOINT=N` every process stops after saving checkpoint N,
writes its process id to `$SIGPHI_LAUNCH_REPORT-<rank>.pid` and waits to be killed, so an interruption test kills a
run that is certainly mid-way, however loaded the machine.
It is not a supported way to train on CPUs (2 cores gain nothing from sharding).
"""

import json
import os
import runpy
import sys
import time
from pathlib import Path

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType


def promote_cpu_launch_to_fsdp() -> None:
    original_init = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if (self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None
                and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"):
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


def report_what_trained() -> None:
    """After `Trainer.train`, record the distributed type and how the parameters are held."""
    from torch.distributed.tensor import DTensor
    from transformers import Trainer

    original_train = Trainer.train

    def train(self, *args, **kwargs):
        result = original_train(self, *args, **kwargs)
        parameters = list(self.model_wrapped.parameters())
        deepspeed = self.accelerator.state.deepspeed_plugin
        report = {"distributed_type": str(self.accelerator.distributed_type), "is_fsdp2": self.accelerator.is_fsdp2,
                  "parameters": len(parameters), "dtensors": sum(isinstance(p, DTensor) for p in parameters),
                  # ZeRO-3 keeps each process's partition in `ds_tensor`, smaller than the full parameter
                  "zero_partitioned": sum(hasattr(p, "ds_tensor") and p.ds_tensor.numel() < p.ds_numel
                                          for p in parameters),
                  "zero_stage": deepspeed.zero_stage if deepspeed is not None else None,
                  "dtypes": sorted({str(p.dtype) for p in parameters}),
                  "num_processes": self.accelerator.num_processes}
        path = f"{os.environ['SIGPHI_LAUNCH_REPORT']}-{self.accelerator.process_index}.json"
        with open(path, "w") as handle:
            json.dump(report, handle)
        return result

    Trainer.train = train


def hold_after_checkpoint(step: int) -> None:
    """Once checkpoint `step` is saved (every process past the save), write this process's id to
    `$SIGPHI_LAUNCH_REPORT-<rank>.pid` and wait to be killed: the launcher starts each process in a session of its
    own, so killing the launcher's process group leaves them running."""
    from transformers import Trainer

    original_save = Trainer._save_checkpoint

    def save(self, *args, **kwargs):
        original_save(self, *args, **kwargs)
        if self.state.global_step == step:
            self.accelerator.wait_for_everyone()
            pid_file = Path(f"{os.environ['SIGPHI_LAUNCH_REPORT']}-{self.accelerator.process_index}.pid")
            partial = pid_file.with_suffix(".writing")
            partial.write_text(str(os.getpid()))
            partial.rename(pid_file)  # whole when it appears
            time.sleep(3600)

    Trainer._save_checkpoint = save


if __name__ == "__main__":
    promote_cpu_launch_to_fsdp()
    report_what_trained()
    if os.environ.get("SIGPHI_HOLD_AFTER_CHECKPOINT"):
        hold_after_checkpoint(int(os.environ["SIGPHI_HOLD_AFTER_CHECKPOINT"]))
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
