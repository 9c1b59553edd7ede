"""Stage 1 — alignment: train the projector only, image encoder and language model frozen.

    python -m train.align --model_name_or_path outputs/sigphi-base --dataset data/digits \\
        --output_dir outputs/sigphi-aligned

The projector learns to place image features where the frozen decoder can read them; nothing the
pretrained towers know is disturbed. Data: a Parquet dataset folder in TRL conversational format, the
seed's CSV (`image,question,answer`) or a JSON/JSONL file of the same records. The output is a full
SigPhi checkpoint (model + processor) that stage 2 starts from.
"""

from dataclasses import dataclass, field

from trl import SFTConfig

from train.cli import run_cli
from train.data import load_conversations
from train.training import load_sigphi, machine_defaults, train_with_sft


@dataclass
class AlignArguments:
    model_name_or_path: str = field(metadata={"help": "SigPhi folder or Hub id (e.g. from train.build_model)."})
    dataset: str = field(metadata={"help": "Parquet dataset folder, seed CSV, or JSON/JSONL file."})
    train_split: str = field(default="train", metadata={"help": "Split of a dataset folder to train on."})


ALIGN_DEFAULTS = {**machine_defaults(), "learning_rate": 1e-3, "num_train_epochs": 1.0,
                  "per_device_train_batch_size": 16, "gradient_checkpointing": False}


def main(args: AlignArguments, training_args: SFTConfig) -> None:
    train_dataset = load_conversations(args.dataset, args.train_split)
    model, processor = load_sigphi(args.model_name_or_path)
    model.freeze_vision_tower()
    model.freeze_language_model()
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"stage 1: training the projector only ({n_trainable:,} parameters) on {len(train_dataset)} rows")
    train_with_sft(model, processor, training_args, train_dataset)


if __name__ == "__main__":
    run_cli(main, AlignArguments, SFTConfig, defaults=ALIGN_DEFAULTS)
