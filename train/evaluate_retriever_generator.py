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

from train.common.cli import run_cli
from train.retrieval.evaluation import DOCS_MODES, evaluate_saved_retriever_generator


@dataclass
class RetrieverGeneratorEvaluateArguments:
    model: str = field(metadata={"help": "Folder written by train.train_retriever_generator."})
    csv: str = field(metadata={"help": "Seed CSV of questions to answer."})
    corpus: str | None = field(default=None, metadata={"help": "JSONL of extra (distractor) documents."})
    docs: str = field(default="retrieved", metadata={"help": "What the generator reads.", "choices": list(DOCS_MODES)})
    n_docs: int | None = field(default=None, metadata={"help": "Documents the generator reads (default: the model's)."})
    concatenate: bool = field(default=False, metadata={
        "help": "Paste the documents into one prompt instead of marginalising over them (the older layout)."})


def main(args: RetrieverGeneratorEvaluateArguments) -> None:
    print(json.dumps(evaluate_saved_retriever_generator(args.model, args.csv, args.corpus, args.docs, args.n_docs,
                                                        args.concatenate)))


if __name__ == "__main__":
    run_cli(main, RetrieverGeneratorEvaluateArguments)
