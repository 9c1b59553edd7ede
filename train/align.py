"""Stage 1 — alignment: train the projector only, image encoder and language model frozen.

    python -m train.align --model_name_or_path outputs/sigphi-base --dataset data/digits \\
        --output_dir outputs/sigphi-aligned

The projector learns to place image features where the frozen decoder can read them; nothing the
pretrained towers know is disturbed. Data: a Parquet dataset folder in TRL conversational format, the
seed's CSV (`image,question,answer`) or a JSON/JSONL file of the same records. The output is a full
SigPhi checkpoint (model + processor) that stage 2 starts from, in the dtype it was loaded in.

`--compute_dtype auto` (the default) computes in bfloat16 on a GPU, and on a CPU in the checkpoint's dtype,
except that a bfloat16 checkpoint computes in float32 on a CPU without native bfloat16; the frozen towers keep
their stored bfloat16 weights either way (cast one layer at a time inside the matmul), so a Phi-3-mini-sized
decoder needs ~10 GB, not the ~17 GB of a float32 copy.
"""

from dataclasses import dataclass, field

from trl import SFTConfig

from train.common.cli import run_cli
from train.common.precision import COMPUTE_DTYPE_CHOICES, COMPUTE_DTYPE_HELP, compute_in, resolve_compute_dtype
from train.common.vqa_data import load_conversations
from train.sigphi.loading import load_sigphi
from train.sigphi.sft_trainer import machine_defaults, train_with_sft


@dataclass
class AlignArguments:
    model_name_or_path: str = field(metadata={"help": "SigPhi folder or Hub id (e.g. from train.build_model)."})
    dataset: str = field(metadata={"help": "Parquet dataset folder, seed CSV, or JSON/JSONL file."})
    train_split: str = field(default="train", metadata={"help": "Split of a dataset folder to train on."})
    compute_dtype: str = field(default="auto", metadata={"help": COMPUTE_DTYPE_HELP, "choices": COMPUTE_DTYPE_CHOICES})


ALIGN_DEFAULTS = {**machine_defaults(activation_checkpointing=False), "learning_rate": 1e-3, "num_train_epochs": 1.0,
                  "per_device_train_batch_size": 16}


def main(args: AlignArguments, training_args: SFTConfig) -> None:
    train_dataset = load_conversations(args.dataset, args.train_split)
    model, processor = load_sigphi(args.model_name_or_path)
    model.freeze_vision_tower()
    model.freeze_language_model()
    dtype = resolve_compute_dtype(args.compute_dtype, model.get_input_embeddings().weight.dtype)
    restore_dtypes = compute_in(model, dtype)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"compute dtype: {str(dtype).removeprefix('torch.')}")
    print(f"stage 1: training the projector only ({n_trainable:,} parameters) on {len(train_dataset)} rows")
    train_with_sft(model, processor, training_args, train_dataset, before_save=restore_dtypes)


if __name__ == "__main__":
    run_cli(main, AlignArguments, SFTConfig, defaults=ALIGN_DEFAULTS)
