"""Evaluate a saved retriever-generator on a seed CSV and print one JSON object.

    python -m train.evaluate_retriever_generator --model O --csv data/retrieval/test.csv \\
        --corpus data/retrieval/corpus.jsonl --docs retrieved

The corpus searched is the CSV's documents plus `--corpus`: the retriever's index is rebuilt for it with the
trained weights, so questions about facts never seen in training are answered from their own documents.
`--docs` picks what the generator reads: the top `--n_docs` `retrieved` documents (each in its own sequence, the
choices' likelihoods marginalised over them with the retriever's scores as the document posterior; `--concatenate`
pastes them into one prompt instead), the `oracle` (gold) ones, or `none` (the floor: what the generator knows
without documents). Retrieval metrics (recall@1, recall@5, MRR over the CSV's gold documents) are reported in every
mode; they are null when the CSV names no gold documents.
"""

import json
from dataclasses import dataclass, field

import numpy as np
import torch

from modeling import RetrieverGeneratorForMultipleChoice
from processing import RetrieverGeneratorProcessor
from train.cli import run_cli
from train.retrieval_data import RetrievalExample, RetrievalTask, load_retrieval_task
from train.retriever_training import rank_documents, ranking_metrics

DOCS_MODES = ("retrieved", "none", "oracle")
RANKING_DEPTH = 100


@dataclass
class EvaluateArguments:
    model: str = field(metadata={"help": "Folder written by train.train_retriever_generator."})
    csv: str = field(metadata={"help": "Seed CSV of questions to answer."})
    corpus: str | None = field(default=None, metadata={"help": "JSONL of extra (distractor) documents."})
    docs: str = field(default="retrieved", metadata={"help": "What the generator reads.", "choices": list(DOCS_MODES)})
    n_docs: int | None = field(default=None, metadata={"help": "Documents the generator reads (default: the model's)."})
    concatenate: bool = field(default=False, metadata={
        "help": "Paste the documents into one prompt instead of marginalising over them (the older layout)."})


def documents_to_read(task: RetrievalTask, example: RetrievalExample, ranked_ids, docs: str, n_docs: int) -> list[dict]:
    if docs == "retrieved":
        return task.documents(ranked_ids[:n_docs])
    if docs == "oracle":
        return task.documents(example.gold_document_ids[:n_docs])
    return []


def evaluate_model(model, processor, task: RetrievalTask, docs: str = "retrieved", n_docs: int | None = None,
                   marginalize: bool | None = None, batch_size: int = 16) -> dict:
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


def evaluate(model_dir: str, csv: str, corpus: str | None = None, docs: str = "retrieved",
             n_docs: int | None = None, concatenate: bool = False) -> dict:
    """Load the retriever-generator saved at `model_dir` and evaluate it on `csv` (+ `corpus`)."""
    task = load_retrieval_task(csv, corpus)
    model = RetrieverGeneratorForMultipleChoice.from_pretrained(model_dir).eval()
    processor = RetrieverGeneratorProcessor.from_pretrained(model_dir)
    return evaluate_model(model, processor, task, docs, n_docs, marginalize=False if concatenate else None)


def main(args: EvaluateArguments) -> None:
    print(json.dumps(evaluate(args.model, args.csv, args.corpus, args.docs, args.n_docs, args.concatenate)))


if __name__ == "__main__":
    run_cli(main, EvaluateArguments)
