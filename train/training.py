"""What the training steps share: loading SigPhi, trainer defaults that suit the machine, and the TRL run.

Every step trains through TRL's `SFTTrainer` with the SigPhi processor as `processing_class`, so the
collator, checkpointing, `--resume_from_checkpoint`, logging (`report_to`) and multi-process training
(`accelerate launch`) are the libraries' own.
"""

import os

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import modeling  # noqa: F401  (registers SigPhi with the Auto classes)
from train.cli import InvalidInput

# LoRA on the decoder's attention and MLP projections only: `q_proj`-style names would also match
# the vision tower's attention, so the regex is anchored on `language_model` (PEFT: one string = a regex).
LANGUAGE_MODEL_LORA_TARGETS = r".*language_model.*\.(qkv_proj|o_proj|gate_up_proj|down_proj)"


def machine_defaults() -> dict:
    """Trainer defaults for this machine: bf16 only where a GPU supports it; loss on the answers only."""
    on_gpu = torch.cuda.is_available()
    return {
        "bf16": on_gpu and torch.cuda.is_bf16_supported(),
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


def load_sigphi(path: str, **kwargs):
    """(model, processor) from a SigPhi folder (a saved one or a Hub id), through the Auto classes.

    A path that holds no model is invalid input (a one-line error, exit status 2): transformers reports missing
    folders, files and Hub repos as `OSError`, and a folder without `config.json` as a confusing `ValueError`.
    """
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise InvalidInput(f"{path}: no config.json, so not a saved model folder")
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True, **kwargs)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    except OSError as error:
        reason = str(error).splitlines()[0]
        raise InvalidInput(f"{path}: neither a model folder nor a reachable Hub repo ({reason})") from None
    return model, processor


def last_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` folder of a previous, interrupted run in `output_dir`, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def train_with_sft(model, processor, training_args, train_dataset, eval_dataset=None):
    """Run TRL's `SFTTrainer`, resuming from the last checkpoint when asked (`--resume_from_checkpoint true`
    or a path), and save the final model and processor to `training_args.output_dir`."""
    from trl import SFTTrainer

    trainer = SFTTrainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processor)
    resume = training_args.resume_from_checkpoint
    if resume in ("true", "True", True):
        resume = last_checkpoint(training_args.output_dir)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    return trainer
