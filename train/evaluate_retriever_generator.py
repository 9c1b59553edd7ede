"""Evaluate a saved retriever-generator on a seed CSV and print one JSON object.

    python -m train.evaluate_retriever_generator --model O --csv data/retrieval/test.csv \\
        --corpus data/retrieval/corpus.jsonl --docs retrieved

The corpus searched is the CSV's documents plus `--corpus`: the retriever's index is rebuilt for it with the
trained weights, so questions about facts never seen in training are answered from their own documents.
`--docs` picks what the generator reads: the top `--n_docs` `retrieved` documents, the `oracle` (gold) ones, or
`none` (the floor: what the generator knows without documents). Retrieval metrics are reported in every mode.
"""

import json
from dataclasses import dataclass, field

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


def documents_to_read(task: RetrievalTask, example: RetrievalExample, ranked_ids, docs: str, n_docs: int) -> list[dict]:
    if docs == "retrieved":
        return task.documents(ranked_ids[:n_docs])
    if docs == "oracle":
        return task.documents(example.gold_document_ids[:n_docs])
    return []


def evaluate_model(model, processor, task: RetrievalTask, docs: str = "retrieved", n_docs: int | None = None) -> dict:
    """Accuracy (`docs` mode), retriever recall@1/@5 and MRR (over the top 100) of `model` on `task`."""
    if docs not in DOCS_MODES:
        raise ValueError(f"docs must be one of {DOCS_MODES}, got {docs!r}")
    n_docs = n_docs or model.config.n_docs
    ranked = rank_documents(model.retriever, processor.retriever_processor, task, min(RANKING_DEPTH, len(task.corpus)))
    correct = 0
    for example, ids in zip(task.examples, ranked):
        documents = documents_to_read(task, example, ids, docs, n_docs)
        prediction = model.predict(processor, example.question, example.image, example.answer_choices, documents)
        correct += prediction.label == example.label
    return {"accuracy": correct / len(task.examples), **ranking_metrics(ranked, task), "n": len(task.examples),
            "docs": docs, "n_docs": 0 if docs == "none" else n_docs}


def evaluate(model_dir: str, csv: str, corpus: str | None = None, docs: str = "retrieved",
             n_docs: int | None = None) -> dict:
    """Load the retriever-generator saved at `model_dir` and evaluate it on `csv` (+ `corpus`)."""
    task = load_retrieval_task(csv, corpus)
    model = RetrieverGeneratorForMultipleChoice.from_pretrained(model_dir).eval()
    processor = RetrieverGeneratorProcessor.from_pretrained(model_dir)
    return evaluate_model(model, processor, task, docs, n_docs)


def main(args: EvaluateArguments) -> None:
    print(json.dumps(evaluate(args.model, args.csv, args.corpus, args.docs, args.n_docs)))


if __name__ == "__main__":
    run_cli(main, EvaluateArguments)
