"""Where a trained retriever misses, by question kind: recall@1 of the catalogue ("digit") and archive ("drawing")
questions of a bundled `retrieval_vqa` split (another task's by question), and whether each miss ranked a picture or a
text first.

    python -m train.make_dataset retrieval_vqa --output_dir /tmp/data/retrieval_vqa
    OMP_NUM_THREADS=1 python -m train.train_retriever_generator --train_csv /tmp/data/retrieval_vqa/train.csv \
        --corpus /tmp/data/retrieval_vqa/corpus.jsonl --val_csv /tmp/data/retrieval_vqa/val.csv \
        --no_gold_documents --preset tiny --output_dir /tmp/rag_answers_only
    OMP_NUM_THREADS=1 python -m bench.retrieval_misses /tmp/rag_answers_only /tmp/data/retrieval_vqa/val.csv

The overall recall@1 of the evaluation CLI does not say which kind of document the retriever fails to find; this
does, on the corpus the CLI searches by default (the saved index plus the split's documents). Point it at a
validation split: choices made from it must not read the test split.
"""

import argparse
import json
from collections import Counter

from bench.reader_ceiling import questions_by_kind
from modeling import RetrieverGeneratorForMultipleChoice
from processing import RetrieverGeneratorProcessor
from train.retrieval.evaluation import searched_task
from train.retrieval.ranking import search_index
from train.retrieval.task import load_retrieval_task


def document_kind(document: dict) -> str:
    has_image, has_text = document["image"] is not None, bool(document.get("text"))
    return "picture and text" if has_image and has_text else "picture" if has_image else "text"


def misses_by_kind(model, processor, task) -> dict[str, dict]:
    """{kind: {"questions": n, "recall_at_1": r, "misses_ranking_first": {document kind: m}}}."""
    ranked = search_index(model.retriever, processor.retriever_processor, task, 1)
    result = {}
    for kind, members in questions_by_kind(task).items():
        missed = [i for i in members if ranked[i][0] not in task.examples[i].gold_document_ids]
        first = Counter(document_kind(task.corpus[ranked[i][0]]) for i in missed)
        result[kind] = {"questions": len(members), "recall_at_1": 1 - len(missed) / len(members),
                        "misses_ranking_first": dict(first)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="A saved retriever-generator folder.")
    parser.add_argument("csv", help="The split to read (a validation split).")
    args = parser.parse_args()
    model = RetrieverGeneratorForMultipleChoice.from_pretrained(args.model).eval()
    processor = RetrieverGeneratorProcessor.from_pretrained(args.model)
    task = searched_task(model, processor, load_retrieval_task(args.csv, documents_optional=True), name=args.csv)
    print("result:", json.dumps({"model": args.model, "csv": args.csv, **misses_by_kind(model, processor, task)}))


if __name__ == "__main__":
    main()
