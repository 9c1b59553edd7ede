"""Stage 1: training the multimodal retriever with transformers' `Trainer` (`train_retriever`).

Each batch holds its queries, their relevant documents (gold, or pseudo-relevant when the data names none) and, per
query, hard negatives: the documents the current model ranks highest that are not relevant, mined from the whole
training corpus at the start of every epoch (as in ANCE). Every document of the batch is a candidate for every query,
so the in-batch positives of other queries are negatives too. The model's own `forward` computes the loss (a
document scores as its best chunk), so the stock `Trainer` needs no subclass.
"""

import os
from collections.abc import Callable

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from train.retrieval.ranking import rank_documents
from train.retrieval.task import RetrievalTask


class HardNegativeMiner(TrainerCallback):
    """Keeps, per training question, the `n_negatives` non-relevant documents the model currently ranks highest.

    Mined with the model as it is at the start of each epoch; before training they are random documents.
    """

    def __init__(self, task: RetrievalTask, processor, n_negatives: int, seed: int = 0):
        self.task, self.processor, self.n_negatives = task, processor, n_negatives
        rng = np.random.default_rng(seed)
        self.negatives = [self._exclude_relevant(rng.permutation(len(task.corpus)), example)
                          for example in task.examples]

    def _exclude_relevant(self, ranked_ids: np.ndarray, example) -> list[int]:
        return [int(i) for i in ranked_ids if i not in example.gold_document_ids][:self.n_negatives]

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        if state.epoch == 0:
            return
        model.eval()
        k = self.n_negatives + max(len(example.gold_document_ids) for example in self.task.examples)
        ranked = rank_documents(model, self.processor, self.task, k)
        model.set_document_index(None)
        model.train()
        self.negatives = [self._exclude_relevant(ids, example) for ids, example in zip(ranked, self.task.examples)]


def image_augmentation(max_shift: float = 0.1, max_degrees: float = 10.0) -> Callable:
    """Small random shifts, rotations and zooms: the same thing seldom comes twice at the same spot."""
    from torchvision.transforms import v2

    return v2.RandomAffine(degrees=max_degrees, translate=(max_shift, max_shift), scale=(1 - max_shift, 1 + max_shift),
                           interpolation=v2.InterpolationMode.BILINEAR)


class RetrievalCollator:
    """Batch of example ids -> queries, `documents` (the union of their relevant documents and hard negatives, as
    chunks) and labels (n_queries, n_documents) marking each query's relevant documents.

    `augment` transforms a question's image unless one of its relevant documents has a picture: matching a picture
    needs its pixels as they are, while finding a text about what the picture shows (a digit) must not depend on
    them.
    """

    def __init__(self, task: RetrievalTask, processor, miner: HardNegativeMiner, augment: Callable | None = None):
        self.task, self.processor, self.miner, self.augment = task, processor, miner, augment

    def query_image(self, example):
        if self.augment is None or example.image is None or any(
                self.task.corpus[i]["image"] is not None for i in example.gold_document_ids):
            return example.image
        return self.augment(example.image)

    def __call__(self, rows: list[dict]) -> dict:
        examples = [self.task.examples[row["example_id"]] for row in rows]
        document_ids = list(dict.fromkeys(
            [i for row, example in zip(rows, examples)
             for i in (*example.gold_document_ids, *self.miner.negatives[row["example_id"]])]))
        queries = self.processor.process_queries([e.question for e in examples], list(map(self.query_image, examples)))
        labels = torch.tensor([[i in example.gold_document_ids for i in document_ids] for example in examples])
        return {**queries, "documents": dict(self.processor.process_documents(self.task.documents(document_ids))),
                "labels": labels}


def train_retriever(retriever, processor, task: RetrievalTask, output_dir: str, epochs: float = 32,
                    batch_size: int = 64, learning_rate: float = 3e-3, n_negatives: int = 8, augment: bool = True,
                    seed: int = 0) -> None:
    """Fit `retriever` to rank each question's `gold_document_ids` first among `task.corpus`; questions without any
    are left out."""
    from datasets import Dataset

    task = task.subset([i for i, example in enumerate(task.examples) if example.gold_document_ids])
    miner = HardNegativeMiner(task, processor, n_negatives, seed)
    args = TrainingArguments(
        output_dir=os.path.join(output_dir, "checkpoints", "retriever"), num_train_epochs=epochs,
        per_device_train_batch_size=batch_size, learning_rate=learning_rate, weight_decay=0.01,
        lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=10, save_strategy="epoch", save_total_limit=1,
        remove_unused_columns=False, report_to="none", seed=seed, dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available())
    collator = RetrievalCollator(task, processor, miner, image_augmentation() if augment else None)
    trainer = Trainer(model=retriever, args=args, data_collator=collator, callbacks=[miner],
                      train_dataset=Dataset.from_dict({"example_id": range(len(task.examples))}))
    trainer.train()
    retriever.eval()
