"""Merge a stage-2 LoRA adapter into its base SigPhi and save a standalone model folder.

    python -m train.merge_lora --adapter outputs/sigphi-sft --output_dir outputs/sigphi-final

The base is reloaded unquantized (merging into 4-bit weights would round the update away), in the dtype
written (`--dtype`, default `auto`: the base folder's own, e.g. bfloat16), so a bf16 base is merged and
written in bf16 without a float32 copy of the model; PEFT's `merge_and_unload` adds each layer's LoRA update
in place and swaps in the trained projector copy. The result is saved with its processor as a self-contained
folder that loads with `trust_remote_code=True`.
"""

import os
from dataclasses import dataclass, field

import torch
from peft import PeftConfig, PeftModel

from train.common.cli import InvalidInput, run_cli
from train.sigphi.loading import load_sigphi


@dataclass
class MergeArguments:
    adapter: str = field(metadata={"help": "Folder written by train.sft (adapter + processor)."})
    output_dir: str = field(metadata={"help": "Where to write the merged model and processor."})
    base_model: str | None = field(default=None, metadata={"help": "Base SigPhi (default: the adapter's base)."})
    dtype: str = field(default="auto", metadata={"help": "Dtype of the merged weights ('auto': the base's own).",
                                                 "choices": ["auto", "float32", "bfloat16", "float16"]})


def merge_lora(adapter: str, output_dir: str, base_model: str | None = None, dtype: str = "auto") -> str:
    if not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
        raise InvalidInput(f"{adapter}: no adapter_config.json (is this a train.sft output folder?)")
    base_model = base_model or PeftConfig.from_pretrained(adapter).base_model_name_or_path
    model, processor = load_sigphi(base_model, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


def main(args: MergeArguments) -> None:
    print(f"merged {args.adapter} into a standalone model at "
          f"{merge_lora(args.adapter, args.output_dir, args.base_model, args.dtype)}")


if __name__ == "__main__":
    run_cli(main, MergeArguments)
