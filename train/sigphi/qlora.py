"""Stage 2's quantization and LoRA configs, and the one regex of the modules SigPhi's LoRA adapts.

The regex also serves the retriever-generator's SigPhi generator and `trl sft --lora_target_modules`.
"""

import torch

from train.common.precision import resolve_compute_dtype

# LoRA on the decoder's attention and MLP projections only: `q_proj`-style names would also match
# the vision tower's attention, so the regex is anchored on `language_model` (PEFT: one string = a regex).
LANGUAGE_MODEL_LORA_TARGETS = r".*language_model.*\.(qkv_proj|o_proj|gate_up_proj|down_proj)"


def quantization_config(quantization: str, compute_dtype: torch.dtype | None = None):
    """`BitsAndBytesConfig` for `--quantization`: NF4 4-bit with double quantization (QLoRA) or LLM.int8, None for
    'none'; 4-bit layers compute in `compute_dtype` (default: what `--compute_dtype auto` picks for a float32
    checkpoint on this device: bfloat16 on a GPU, float32 on a CPU)."""
    from transformers import BitsAndBytesConfig

    if quantization == "none":
        return None
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute_dtype = compute_dtype or resolve_compute_dtype("auto", torch.float32)
    # FSDP and ZeRO-3 shard parameters as flat tensors of one dtype: 4-bit weights are then stored in the compute
    # dtype (bitsandbytes packs them the same way), so they shard beside the LoRA and projector weights.
    storage = compute_dtype if launched_with_parameter_sharding() else torch.uint8
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_storage=storage)


def launched_with_parameter_sharding() -> bool:
    """Whether `accelerate launch` started this process under FSDP or DeepSpeed ZeRO-3 (it says so in the
    environment before any model is built)."""
    import os

    return (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
            or os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3")


def lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules: str = None,
                train_projector: bool = True):
    """Stage 2's `LoraConfig`: LoRA on the language model's projections, the projector trained fully."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=target_modules or LANGUAGE_MODEL_LORA_TARGETS, task_type="CAUSAL_LM",
                      modules_to_save=["multi_modal_projector"] if train_projector else None)
