"""Stage 2 — supervised fine-tuning with QLoRA: 4-bit NF4 decoder, LoRA on its projections, projector trained.

    python -m train.sft --model_name_or_path outputs/sigphi-aligned --dataset data/digits \\
        --quantization 4bit --output_dir outputs/sigphi-sft
    python -m train.merge_lora --adapter outputs/sigphi-sft --output_dir outputs/sigphi-final

The seed's recipe, with the libraries doing each part: `BitsAndBytesConfig` (the model keeps its vision
tower and projector unquantized by itself), `prepare_model_for_kbit_training`, `LoraConfig` on the
language model only, the projector fully trained (`modules_to_save`), `get_peft_model`, and TRL's
`SFTTrainer` with loss on the assistant's answer only. bitsandbytes ≥ 0.50 runs 4- and 8-bit on CPU too.
The output folder holds the adapter and processor; `train.merge_lora` turns it into a standalone model.
"""

from dataclasses import dataclass, field

from peft import get_peft_model, prepare_model_for_kbit_training
from transformers import set_seed
from trl import SFTConfig

from train.common.cli import InvalidInput, run_cli
from train.common.precision import COMPUTE_DTYPE_CHOICES, COMPUTE_DTYPE_HELP, compute_in, resolve_compute_dtype
from train.common.vqa_data import load_conversations
from train.sigphi.loading import checkpoint_dtype, load_sigphi
from train.sigphi.qlora import LANGUAGE_MODEL_LORA_TARGETS, lora_config, quantization_config
from train.sigphi.sft_trainer import machine_defaults, train_with_sft


@dataclass
class SFTArguments:
    model_name_or_path: str = field(metadata={"help": "SigPhi folder or Hub id (stage-1 output)."})
    dataset: str = field(metadata={"help": "Parquet dataset folder, seed CSV, or JSON/JSONL file."})
    train_split: str = field(default="train", metadata={"help": "Split of a dataset folder to train on."})
    quantization: str = field(default="4bit", metadata={"help": "Decoder weights while training.",
                                                        "choices": ["none", "4bit", "8bit"]})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str = field(default=LANGUAGE_MODEL_LORA_TARGETS,
                                     metadata={"help": "Regex of the modules that get LoRA adapters."})
    train_projector: bool = field(default=True, metadata={"help": "Also train the projector (fully)."})
    compute_dtype: str = field(default="auto", metadata={"help": COMPUTE_DTYPE_HELP, "choices": COMPUTE_DTYPE_CHOICES})


SFT_DEFAULTS = {**machine_defaults(), "learning_rate": 2e-4, "num_train_epochs": 1.0,
                "per_device_train_batch_size": 8}


def prepare_qlora_model(args: SFTArguments, training_args: SFTConfig):
    """(PEFT model, processor): quantized load, k-bit preparation, LoRA on the language model."""
    dtype = resolve_compute_dtype(args.compute_dtype, checkpoint_dtype(args.model_name_or_path))
    quantization = quantization_config(args.quantization, dtype)
    model, processor = load_sigphi(args.model_name_or_path, quantization_config=quantization)
    if quantization is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=training_args.gradient_checkpointing)
    print(f"compute dtype: {str(dtype).removeprefix('torch.')}")
    lora = lora_config(args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules, args.train_projector)
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as error:
        raise InvalidInput(f"--lora_target_modules {args.lora_target_modules!r}: {error}") from None
    if quantization is None:  # k-bit preparation already made every unquantized tensor float32
        compute_in(peft_model, dtype)
    return peft_model, processor


def main(args: SFTArguments, training_args: SFTConfig) -> None:
    train_dataset = load_conversations(args.dataset, args.train_split)
    set_seed(training_args.seed)  # LoRA's random initialisation happens before the trainer seeds anything
    model, processor = prepare_qlora_model(args, training_args)
    trainable, total = model.get_nb_trainable_parameters()
    print(f"stage 2: {args.quantization} decoder, training {trainable:,} of {total:,} parameters "
          f"on {len(train_dataset)} rows")
    train_with_sft(model, processor, training_args, train_dataset)


if __name__ == "__main__":
    run_cli(main, SFTArguments, SFTConfig, defaults=SFT_DEFAULTS)
