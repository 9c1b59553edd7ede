"""Training the multimodal retriever with transformers' `Trainer`, and measuring how well it ranks.

Each batch holds its queries, their gold documents and, per query, hard negatives: the documents the current
model ranks highest that are not gold, mined from the whole training corpus at the start of every epoch (as in
ANCE). Every document of the batch is a candidate for every query, so the in-batch golds of other queries are
negatives too. The model's own `forward` computes the loss, so the stock `Trainer` needs no subclass.
`warm_up_image_tower` gives the image tower a label-free start (instance discrimination on the task's images).
"""

import os
from collections.abc import Callable

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from modeling.modeling_retriever import ranking_loss
from train.retrieval.task import RetrievalTask


def rank_documents(retriever, processor, task: RetrievalTask, k: int, return_scores: bool = False):
    """(n_examples, k) ids of the corpus documents the retriever ranks highest for each question, best first (and,
    with `return_scores`, their retriever logits, the `doc_scores` the generator's document posterior uses).

    Builds (or rebuilds) the retriever's document index on `task.corpus`.
    """
    retriever.build_document_index(task.corpus, processor)
    query_embeds = retriever.embed_queries([e.question for e in task.examples], [e.image for e in task.examples],
                                           processor)
    scores, ids = retriever.retrieve(query_embeds, k)
    if return_scores:
        return ids.numpy(), (scores * retriever.logit_scale.detach().exp().cpu().float()).numpy()
    return ids.numpy()


def ranking_metrics(ranked_ids: np.ndarray, task: RetrievalTask) -> dict[str, float | None]:
    """Recall@1, recall@5 (a gold document among the top k) and mean reciprocal rank of the first gold document
    (0 when none is among the ranked ids), over the questions that name gold documents (None if none do)."""
    first_gold_rank = []
    for ids, example in zip(ranked_ids, task.examples):
        if not example.gold_document_ids:
            continue
        hits = np.flatnonzero(np.isin(ids, example.gold_document_ids))
        first_gold_rank.append(hits[0] + 1 if len(hits) else np.inf)
    if not first_gold_rank:
        return {"retriever_recall_at_1": None, "retriever_recall_at_5": None, "retriever_mrr": None}
    ranks = np.array(first_gold_rank)
    return {"retriever_recall_at_1": float(np.mean(ranks <= 1)), "retriever_recall_at_5": float(np.mean(ranks <= 5)),
            "retriever_mrr": float(np.mean(1.0 / ranks))}


class HardNegativeMiner(TrainerCallback):
    """Keeps, per training question, the `n_negatives` non-gold documents the model currently ranks highest.

    Mined with the model as it is at the start of each epoch; before training they are random documents.
    """

    def __init__(self, task: RetrievalTask, processor, n_negatives: int, seed: int = 0):
        self.task, self.processor, self.n_negatives = task, processor, n_negatives
        rng = np.random.default_rng(seed)
        self.negatives = [self._exclude_gold(rng.permutation(len(task.corpus)), example)
                          for example in task.examples]

    def _exclude_gold(self, ranked_ids: np.ndarray, example) -> list[int]:
        return [int(i) for i in ranked_ids if i not in example.gold_document_ids][:self.n_negatives]

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        if state.epoch == 0:
            return
        model.eval()
        k = self.n_negatives + max(len(example.gold_document_ids) for example in self.task.examples)
        ranked = rank_documents(model, self.processor, self.task, k)
        model.set_document_index(None)
        model.train()
        self.negatives = [self._exclude_gold(ids, example) for ids, example in zip(ranked, self.task.examples)]


def image_augmentation(max_shift: float = 0.1, max_degrees: float = 10.0) -> Callable:
    """Small random shifts, rotations and zooms: the same drawing seldom comes twice at the same spot."""
    from torchvision.transforms import v2

    return v2.RandomAffine(degrees=max_degrees, translate=(max_shift, max_shift), scale=(1 - max_shift, 1 + max_shift),
                           interpolation=v2.InterpolationMode.BILINEAR)


def instance_views() -> Callable:
    """Two calls give two views of one picture: shifted, rotated and zoomed a little, its colour dropped half of the
    time and its brightness changed, so that a drawing and a painting of it (another colour, another brightness) look
    like views of one thing."""
    from torchvision.transforms import v2

    return v2.Compose([image_augmentation(), v2.RandomGrayscale(p=0.5), v2.ColorJitter(brightness=0.7)])


def warm_up_image_tower(retriever, processor, images: list, epochs: int = 30, batch_size: int = 256,
                        learning_rate: float = 3e-3, temperature: float = 0.1, seed: int = 0) -> list[float]:
    """A label-free start for the image tower: instance discrimination on the task's own images (SimCLR's loss, as
    Contriever pretrains a text retriever on its corpus), each image's nearest among the batch's views must be
    its other view. `images` may hold None (questions without one). Returns the loss of each epoch.

    Why: training from the answers alone, an image document has no text to check; it holds the answer when it is a
    copy of the question's own picture (`train.retrieval.pseudo_relevance.picture_neighbours`), and finding copies
    needs a tower that matches pictures. A tower from random weights does not; after this warm-up a question's
    drawing finds its painted copy among the image documents (the bundled task's archive questions). Only the image
    tower and its projection train.
    """
    from processing.processing_retriever_generator import to_rgb

    views = instance_views()
    parameters = [*retriever.image_model.parameters(), *retriever.image_projection.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # the views' random transforms
    images = [to_rgb(image) for image in images if image is not None]
    losses = []
    retriever.train()
    for _ in range(epochs):
        order, epoch_losses = rng.permutation(len(images)), []
        for start in range(0, len(order), batch_size):
            batch = [images[i] for i in order[start:start + batch_size]]
            first, second = (retriever.encode_images(processor.image_processor(
                [views(image) for image in batch], return_tensors="pt")["pixel_values"]) for _ in range(2))
            logits = first @ second.T / temperature  # (batch, batch): view i of one image against all others
            same_image = torch.eye(len(batch), dtype=torch.bool)
            loss = (ranking_loss(logits, same_image) + ranking_loss(logits.T, same_image)) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_losses.append(float(loss.detach()))
        losses.append(float(np.mean(epoch_losses)))
    retriever.eval()
    return losses


class RetrievalCollator:
    """Batch of example ids -> queries, the union of their gold documents and hard negatives, and labels
    (n_queries, n_documents) marking each query's gold documents.

    `augment` transforms a question's image unless one of its gold documents is an image: finding the very
    picture needs its exact pixels, finding what it shows (a digit) must not.
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
        queries = self.processor.process_queries([e.question for e in examples],
                                                 [self.query_image(e) for e in examples])
        documents = self.processor.process_documents(self.task.documents(document_ids))
        labels = torch.tensor([[i in example.gold_document_ids for i in document_ids] for example in examples])
        return {**queries, **{name if name == "document_is_image" else f"document_{name}": value
                              for name, value in documents.items()}, "labels": labels}


def train_retriever(retriever, processor, task: RetrievalTask, output_dir: str, epochs: float = 32,
                    batch_size: int = 64, learning_rate: float = 3e-3, n_negatives: int = 8, augment: bool = True,
                    seed: int = 0) -> None:
    """Fit `retriever` to rank each question's gold documents first among `task.corpus`."""
    from datasets import Dataset

    miner = HardNegativeMiner(task, processor, n_negatives, seed)
    args = TrainingArguments(
        output_dir=os.path.join(output_dir, "checkpoints", "retriever"), num_train_epochs=epochs,
        per_device_train_batch_size=batch_size, learning_rate=learning_rate, weight_decay=0.01,
        lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=10, save_strategy="epoch", save_total_limit=1,
        remove_unused_columns=False, report_to="none", seed=seed, dataloader_num_workers=0)
    collator = RetrievalCollator(task, processor, miner, image_augmentation() if augment else None)
    trainer = Trainer(model=retriever, args=args, data_collator=collator, callbacks=[miner],
                      train_dataset=Dataset.from_dict({"example_id": range(len(task.examples))}))
    trainer.train()
    retriever.eval()
