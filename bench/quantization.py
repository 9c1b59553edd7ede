"""Bytes of the language model's weights at fp32 / bf16 / 4-bit NF4 / 8-bit, and LoRA trainable parameters.

Measured on the benchmark shape (bitsandbytes runs on CPU) and, for Phi-3-mini's real shape, counted on
the `meta` device (no weights are materialised, so 3.8 B parameters cost nothing).
"""

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, BitsAndBytesConfig, Phi3ForCausalLM

from bench.models import SHAPES, text_config
from train.sigphi.qlora import LANGUAGE_MODEL_LORA_TARGETS

PHI3_MINI = {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32064}


def _weights_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _quantized_language_model_bytes(shape_name: str, tmp_dir: str) -> dict:
    """Save a Phi-3 of the benchmark shape once, reload it in each precision, and sum its tensors' bytes."""
    Phi3ForCausalLM(text_config(SHAPES[shape_name])).save_pretrained(tmp_dir)
    precisions = {
        "fp32": {"dtype": torch.float32},
        "bf16": {"dtype": torch.bfloat16},
        # embeddings, norms and the LM head stay unquantized, in bf16 as in QLoRA
        "nf4": {"dtype": torch.bfloat16, "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)},
        "int8": {"dtype": torch.bfloat16, "quantization_config": BitsAndBytesConfig(load_in_8bit=True)},
    }
    return {name: _weights_bytes(Phi3ForCausalLM.from_pretrained(tmp_dir, **kwargs))
            for name, kwargs in precisions.items()}


def lora_trainable_parameters(config_overrides: dict, rank: int = 16) -> dict:
    """Trainable vs total parameters with LoRA on the decoder's projections (regex of the training steps)."""
    config = AutoConfig.for_model("phi3", pad_token_id=0, eos_token_id=1, bos_token_id=1,
                                  **config_overrides)
    with torch.device("meta"):
        model = Phi3ForCausalLM(config)
    # the same projections the SigPhi regex targets, named as inside a plain Phi-3
    targets = LANGUAGE_MODEL_LORA_TARGETS.replace(".*language_model.*", ".*layers.*")
    peft_model = get_peft_model(model, LoraConfig(r=rank, target_modules=targets))
    trainable, total = peft_model.get_nb_trainable_parameters()
    return {"rank": rank, "trainable": trainable, "total": total, "fraction": trainable / total}


def run(shape_name: str, tmp_dir: str) -> dict:
    shape = SHAPES[shape_name]
    shape_config = {k: getattr(text_config(shape), k) for k in PHI3_MINI}
    return {"bytes": _quantized_language_model_bytes(shape_name, tmp_dir),
            "lora_bench_shape": lora_trainable_parameters(shape_config),
            "lora_phi3_mini": lora_trainable_parameters(PHI3_MINI)}
