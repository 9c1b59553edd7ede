"""Stage 2: a warm start of the generator on questions shown with their top *retrieved* document
(`warm_start_generator`).

TRL's `SFTTrainer` on TRL's conversational vision format, built by the same `RetrieverGeneratorProcessor.conversation`
that builds prompts at inference, loss on the answer only (the right choice, or the most common reference answer).
LoRA adapters for a pretrained generator (QLoRA on a 4-bit one), merged back when done.
"""

import os

from peft import LoraConfig

from processing import RetrieverGeneratorProcessor
from train.sigphi.sft_trainer import machine_defaults
from train.retrieval.task import RetrievalTask


def generator_rows(task: RetrievalTask, document_ids, document_template: str) -> list[dict]:
    """One conversation per question: its `document_ids` row of documents, its image, question and target answer."""
    rows = []
    for example, ids in zip(task.examples, document_ids):
        messages, images = RetrieverGeneratorProcessor.conversation(
            example.question, example.image, task.documents([int(i) for i in ids]), document_template,
            answer=example.target_answer)
        rows.append({"messages": messages, "images": images})
    return rows


def generator_lora_config(target_modules: str | list[str], r: int = 16, alpha: int | None = None) -> LoraConfig:
    """LoRA adapters on `target_modules` (a regex, a list of names, or "all-linear")."""
    return LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=0.0, target_modules=target_modules,
                      task_type="CAUSAL_LM")


def train_generator(generator, processor, rows: list[dict], output_dir: str, epochs: float = 2,
                    batch_size: int = 16, learning_rate: float = 1e-3, peft_config: LoraConfig | None = None,
                    gradient_checkpointing: bool = False, seed: int = 0, name: str = "generator"):
    """Fit `generator` to answer `rows` (TRL conversational rows); with `peft_config`, train LoRA adapters and return
    the merged model. Checkpoints go to `output_dir/checkpoints/name`."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**{
        **machine_defaults(gradient_checkpointing), "output_dir": os.path.join(output_dir, "checkpoints", name),
        "num_train_epochs": epochs, "per_device_train_batch_size": batch_size, "learning_rate": learning_rate,
        "lr_scheduler_type": "cosine", "warmup_steps": 0.05, "weight_decay": 0.0, "save_strategy": "epoch",
        "save_total_limit": 1, "max_length": None, "report_to": "none", "seed": seed})
    trainer = SFTTrainer(model=generator, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=processor, peft_config=peft_config)
    trainer.train()
    model = trainer.model.merge_and_unload() if peft_config is not None else trainer.model
    return model.eval()


def warm_start_generator(generator, processor, task: RetrievalTask, retrieved_ids, document_template: str,
                         output_dir: str, **training) -> object:
    """Stage 2: fine-tune `generator` to answer each question of `task` from its top retrieved documents
    (`retrieved_ids`, (n_examples, k)); `training` as `train_generator` takes it. Returns the trained generator."""
    return train_generator(generator, processor, generator_rows(task, retrieved_ids, document_template), output_dir,
                           **training)
