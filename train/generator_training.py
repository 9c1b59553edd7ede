"""Fine-tuning the generator on questions shown with their *retrieved* documents, with TRL's `SFTTrainer`.

Training on what the retriever actually returns (not the gold documents) teaches the generator the prompts it
will see at test time, retrieval mistakes included. Rows are TRL's conversational vision format (`messages` +
`images`), built by the same `RetrieverGeneratorProcessor.conversation` that builds prompts at inference, and
the loss covers the answer only (`assistant_only_loss`).
"""

import os

import torch
from peft import LoraConfig

from processing import RetrieverGeneratorProcessor
from train.retrieval_data import RetrievalTask


def generator_rows(task: RetrievalTask, document_ids, document_template: str) -> list[dict]:
    """One conversation per question: its `document_ids` row of documents, its image, question and right answer."""
    rows = []
    for example, ids in zip(task.examples, document_ids):
        messages, images = RetrieverGeneratorProcessor.conversation(
            example.question, example.image, task.documents([int(i) for i in ids]), document_template,
            answer=example.answer_choices[example.label])
        rows.append({"messages": messages, "images": images})
    return rows


def lora_config(target_modules: str | list[str], r: int = 16, alpha: int | None = None) -> LoraConfig:
    """LoRA adapters on `target_modules` (a regex, a list of names, or "all-linear")."""
    return LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=0.0, target_modules=target_modules,
                      task_type="CAUSAL_LM")


def train_generator(generator, processor, rows: list[dict], output_dir: str, epochs: float = 2,
                    batch_size: int = 16, learning_rate: float = 1e-3, peft_config: LoraConfig | None = None,
                    gradient_checkpointing: bool = False, seed: int = 0):
    """Fit `generator` to answer `rows`; with `peft_config`, train LoRA adapters and return the merged model."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_list(rows)
    args = SFTConfig(
        output_dir=os.path.join(output_dir, "checkpoints", "generator"), num_train_epochs=epochs,
        per_device_train_batch_size=batch_size, learning_rate=learning_rate, lr_scheduler_type="cosine",
        warmup_steps=0.05, weight_decay=0.0, logging_steps=10, save_strategy="epoch", save_total_limit=1,
        assistant_only_loss=True, max_length=None, gradient_checkpointing=gradient_checkpointing,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(), report_to="none", seed=seed)
    trainer = SFTTrainer(model=generator, args=args, train_dataset=dataset, processing_class=processor,
                         peft_config=peft_config)
    trainer.train()
    model = trainer.model.merge_and_unload() if peft_config is not None else trainer.model
    return model.eval()
