"""Evaluating a retriever-generator on a seed-CSV task: answer accuracy with the retrieved, the gold (`oracle`) or no
documents, and the retriever's recall@1, recall@5 and MRR.

Retrieved documents are each read in their own sequence, the choices' likelihoods marginalised over them with the
retriever's scores as the document posterior (`marginalize=False` pastes them into one prompt instead).
"""

import numpy as np
import torch

from modeling import RetrieverGeneratorForMultipleChoice
from processing import RetrieverGeneratorProcessor
from train.retrieval.retriever_training import rank_documents, ranking_metrics
from train.retrieval.task import RetrievalExample, RetrievalTask, load_retrieval_task

DOCS_MODES = ("retrieved", "none", "oracle")
RANKING_DEPTH = 100


def documents_to_read(task: RetrievalTask, example: RetrievalExample, ranked_ids, docs: str, n_docs: int) -> list[dict]:
    if docs == "retrieved":
        return task.documents(ranked_ids[:n_docs])
    if docs == "oracle":
        return task.documents(example.gold_document_ids[:n_docs])
    return []


def evaluate_retriever_generator(model, processor, task: RetrievalTask, docs: str = "retrieved",
                                 n_docs: int | None = None, marginalize: bool | None = None,
                                 batch_size: int = 16) -> dict:
    """Accuracy (`docs` mode, top `n_docs` documents, marginalised unless `marginalize=False`), retriever
    recall@1/@5 and MRR (over the top 100) of `model` on `task`.

    Retrieved documents are weighted by the retriever's scores (the document posterior); gold (`oracle`) ones alike.
    """
    if docs not in DOCS_MODES:
        raise ValueError(f"docs must be one of {DOCS_MODES}, got {docs!r}")
    n_docs = n_docs or model.config.n_docs
    depth = min(RANKING_DEPTH, len(task.corpus))
    ranked, scores = rank_documents(model.retriever, processor.retriever_processor, task, depth, return_scores=True)
    # Batches of questions reading the same number of documents (every question, except oracle rows with fewer).
    groups: dict[int, list[tuple[int, list[dict]]]] = {}
    for index, (example, ids) in enumerate(zip(task.examples, ranked)):
        documents = documents_to_read(task, example, ids, docs, n_docs)
        groups.setdefault(len(documents), []).append((index, documents))
    correct = 0
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            batch = members[start:start + batch_size]
            examples = [task.examples[i] for i, _ in batch]
            read = [documents for _, documents in batch]
            doc_scores = None
            if docs == "retrieved" and read[0]:
                doc_scores = torch.tensor(np.stack([scores[i][:len(read[0])] for i, _ in batch]))
            predictions = model.predict_batch(processor, [e.question for e in examples], [e.image for e in examples],
                                              [e.answer_choices for e in examples], read, doc_scores,
                                              marginalize=marginalize)
            for example, prediction in zip(examples, predictions):
                correct += prediction.label == example.label
    n = len(task.examples)
    result = {"accuracy": correct / n, **ranking_metrics(ranked, task), "n": n, "docs": docs,
              "n_docs": 0 if docs == "none" else n_docs}
    if docs == "retrieved":
        result["marginalize"] = model.config.marginalize if marginalize is None else marginalize
    return result


def evaluate_saved_retriever_generator(model_dir: str, csv: str, corpus: str | None = None, docs: str = "retrieved",
                                       n_docs: int | None = None, concatenate: bool = False) -> dict:
    """Load the retriever-generator saved at `model_dir` and evaluate it on `csv` (+ `corpus`)."""
    task = load_retrieval_task(csv, corpus)
    model = RetrieverGeneratorForMultipleChoice.from_pretrained(model_dir).eval()
    processor = RetrieverGeneratorProcessor.from_pretrained(model_dir)
    return evaluate_retriever_generator(model, processor, task, docs, n_docs,
                                        marginalize=False if concatenate else None)
