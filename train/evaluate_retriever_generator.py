"""Evaluate a saved retriever-generator on a seed CSV and print one JSON object.

    python -m train.evaluate_retriever_generator --model O --csv data/retrieval/test.csv --docs retrieved

The corpus searched is, by default, the model's saved index (the corpus it was trained with) plus the CSV's
documents, so training documents are distractors too; `--corpus FILE` searches that JSONL file's documents plus the
CSV's instead, `--closed_corpus` the CSV's documents only (and `--corpus`'s). The JSON says which (`corpus`).
`--docs` picks what the generator reads: the top `--n_docs` `retrieved` documents (each in its own sequence, scores
marginalised over them with the retriever's scores as the document posterior; `--concatenate` pastes them into one
prompt instead), the `oracle` (gold) ones, or `none` (the floor: what the generator knows without documents).
Multiple-choice questions give `accuracy`; questions with reference answers (`answers` column) also `vqa_accuracy`
and `exact_match` of the generated answer (`--open_ended` asks for them on multiple-choice questions too). Retrieval
metrics (recall@1, recall@5, MRR, counted by document) are reported in every mode; null without gold documents.
"""

import json
from dataclasses import dataclass, field

from train.common.cli import run_cli
from train.retrieval.evaluation import DOCS_MODES, evaluate_saved_retriever_generator


@dataclass
class RetrieverGeneratorEvaluateArguments:
    model: str = field(metadata={"help": "Folder written by train.train_retriever_generator."})
    csv: str = field(metadata={"help": "Seed CSV of questions to answer."})
    corpus: str | None = field(default=None, metadata={
        "help": "JSONL of documents to search instead of the saved index (with the CSV's documents)."})
    closed_corpus: bool = field(default=False, metadata={
        "help": "Search the CSV's documents (and --corpus's) only, not the saved index."})
    docs: str = field(default="retrieved", metadata={"help": "What the generator reads.", "choices": list(DOCS_MODES)})
    n_docs: int | None = field(default=None, metadata={"help": "Documents the generator reads (default: the model's)."})
    concatenate: bool = field(default=False, metadata={
        "help": "Paste the documents into one prompt instead of marginalising over them (the older layout)."})
    open_ended: bool = field(default=False, metadata={
        "help": "Also generate free answers for multiple-choice questions (VQA accuracy against the right choice)."})


def main(args: RetrieverGeneratorEvaluateArguments) -> None:
    print(json.dumps(evaluate_saved_retriever_generator(
        args.model, args.csv, args.corpus, args.docs, args.n_docs, args.concatenate, args.closed_corpus,
        open_ended=True if args.open_ended else None)))


if __name__ == "__main__":
    run_cli(main, RetrieverGeneratorEvaluateArguments)
