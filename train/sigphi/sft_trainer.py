"""TRL runs of the SigPhi training steps: trainer defaults that suit the machine, resuming, and saving.

Every step trains through TRL's `SFTTrainer` with the SigPhi processor as `processing_class`, so the
collator, checkpointing, `--resume_from_checkpoint`, logging (`report_to`) and multi-process training
(`accelerate launch`) are the libraries' own.
"""

import os

import torch

from modeling.transformers_compat import activation_checkpointing_argument
from train.common.precision import gpu_supports_bf16


def machine_defaults(activation_checkpointing: bool = True) -> dict:
    """Trainer defaults for this machine: bf16 only where a GPU supports it, pinned memory only with a GPU to pin
    for; loss on the answers only; activation checkpointing under the installed transformers' name for it (TRL's
    default, True, unless told)."""
    on_gpu = torch.cuda.is_available()
    return {
        activation_checkpointing_argument(): activation_checkpointing,
        "dataloader_pin_memory": on_gpu,
        "bf16": gpu_supports_bf16(),
        "use_cpu": not on_gpu,
        "assistant_only_loss": True,
        "report_to": "tensorboard" if _tensorboard_installed() else "none",
        "logging_steps": 10,
        "save_strategy": "steps",
        "save_steps": 200,
        "save_total_limit": 2,
    }


def _tensorboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def last_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` folder of a previous, interrupted run in `output_dir`, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def train_with_sft(model, processor, training_args, train_dataset, eval_dataset=None, before_save=None):
    """Run TRL's `SFTTrainer`, resuming from the last checkpoint when asked (`--resume_from_checkpoint true`
    or a path), and save the final model and processor to `training_args.output_dir` (calling `before_save()`
    first, if given: e.g. the `restore` of `compute_in`)."""
    from trl import SFTTrainer

    trainer = SFTTrainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processor)
    resume = training_args.resume_from_checkpoint
    if resume in ("true", "True", True):
        resume = last_checkpoint(training_args.output_dir)
    trainer.train(resume_from_checkpoint=resume)
    if before_save is not None:
        before_save()
    if trainer.is_fsdp_enabled:  # checkpoints stay sharded (fast, resumable); the final folder is one full model
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(training_args.output_dir)
    return trainer
