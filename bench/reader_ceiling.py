"""Where the tiny generator's reading stops: oracle accuracy (the gold document read) by question kind, before and
after the gold warm start, and whether its vision names the pictured digit, on a task's validation split.

    python -m train.make_dataset retrieval_vqa --passages --output_dir /tmp/data/passages
    OMP_NUM_THREADS=1 python -m bench.reader_ceiling /tmp/data/passages    # ≈ 3 min with the stand-in kept on disk

The oracle column of docs/retriever_generator.md is the ceiling retrieval cannot raise; this splits it, so that a
miss is put on the right part: reading a picture's colour ("drawing" questions), finding the sentence about the
pictured digit among several ("digit" questions), or seeing the digit at all; on other tasks (the encyclopedia) by
question, and on every task by whether the right answer is a word the stand-in's reading rows ever answer with (a
pretrained reader has read every word; the stand-in only its own lists). Reads only the validation split.

    python -m train.make_dataset encyclopedia --output_dir /tmp/data/encyclopedia
    OMP_NUM_THREADS=1 python -m bench.reader_ceiling /tmp/data/encyclopedia
"""

import argparse
import csv
import json
from pathlib import Path

from datasets import Dataset
from sklearn.datasets import load_digits

from train.common.vqa_data import conversation_row
from train.retrieval.evaluation import multiple_choice_accuracy
from train.retrieval.generator_stage import warm_start_generator
from train.retrieval.pipeline import TrainRetrieverGeneratorArguments, build_model, load_tasks
from train.retrieval.standins import COLOURS, DIGIT_WORDS, FACTS, NUMBER_WORDS
from train.sigphi.evaluation import evaluate_sigphi

KINDS = ("digit", "drawing")  # catalogue questions ("... what colour is this digit?"), archive ones ("... drawing?")
# Every answer the stand-in's reading rows give (`train.retrieval.standins.reading_rows`).
PRACTISED_ANSWERS = {*COLOURS, *NUMBER_WORDS, *DIGIT_WORDS,
                     *(value for _, _, values in FACTS.values() for value in values)}


def questions_by_kind(task) -> dict[str, list[int]]:
    """{kind: indices of `task`'s questions of that kind}. `retrieval_vqa`'s questions name their catalogue, so they
    are grouped by what they ask about (KINDS); any other task's by their text (the encyclopedia asks four
    questions)."""
    kinds: dict[str, list[int]] = {}
    for i, example in enumerate(task.examples):
        kinds.setdefault(next((kind for kind in KINDS if kind in example.question), example.question), []).append(i)
    return kinds


def oracle_by_kind(model, processor, task) -> dict[str, dict]:
    """{group: {"questions": n, "oracle": accuracy reading the first gold document}} for all questions, each kind, and
    right answers the stand-in practised or not."""
    everyone = range(len(task.examples))
    practised = [i for i in everyone if task.examples[i].answer_choices[task.examples[i].label] in PRACTISED_ANSWERS]
    groups = {"all": list(everyone), **questions_by_kind(task), "answer practised": practised,
              "answer never practised": sorted(set(everyone) - set(practised))}
    result = {}
    for group, members in groups.items():
        if not members:
            continue
        subset = task.subset(members)
        read = [subset.documents(e.gold_document_ids[:1]) for e in subset.examples]
        accuracy = multiple_choice_accuracy(model, processor, subset, read, [None] * len(read), None, 16)
        result[group] = {"questions": len(read), "oracle": round(accuracy, 3)}
    return result


def digits_named(model, processor, task, data: Path, digit_questions: list[int]) -> dict:
    """Share of the "digit" questions (`digit_questions`, indices into `task`) whose pictured digit the generator names
    ("What digit is this?", the reading stand-in's question, through `evaluate_sigphi`); the picture's file name (the
    CSV's `question_image`) is its index in `load_digits`, as `train.make_dataset` writes it."""
    targets = load_digits().target
    with open(data / "val.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["question_text"] for row in rows] == [e.question for e in task.examples], \
        "val.csv and the task disagree"
    questions = Dataset.from_list([
        conversation_row(task.examples[i].image, "What digit is this?",
                         DIGIT_WORDS[targets[int(Path(rows[i]["question_image"]).stem)]]) for i in digit_questions])
    named = evaluate_sigphi(model.generator, processor.generator_processor, questions, max_new_tokens=8)
    return {"questions": named["n"], "digit_named": named["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="A `train.make_dataset` folder with train.csv, val.csv and corpus.jsonl.")
    parser.add_argument("--warm_start_epochs", type=float, default=TrainRetrieverGeneratorArguments.generator_epochs,
                        help="As the pipeline's --generator_epochs (its default).")
    parser.add_argument("--output_dir", default="/tmp/reader_ceiling")
    args = parser.parse_args()
    data = Path(args.data)
    pipeline_args = TrainRetrieverGeneratorArguments(
        train_csv=str(data / "train.csv"), val_csv=str(data / "val.csv"), corpus=str(data / "corpus.jsonl"),
        output_dir=args.output_dir, preset="tiny")
    train_task, val_task = load_tasks(pipeline_args)
    model, processor, _ = build_model(pipeline_args, train_task)
    result = {"data": str(data), "stand-in": oracle_by_kind(model, processor, val_task)}
    digit_questions = questions_by_kind(val_task).get("digit")
    if digit_questions:  # before the task's prompts
        result["stand-in vision"] = digits_named(model, processor, val_task, data, digit_questions)
    model.generator = warm_start_generator(
        model.generator, processor.generator_processor, train_task,
        [e.gold_document_ids[:1] for e in train_task.examples], model.config.document_template,
        args.output_dir, epochs=args.warm_start_epochs, learning_rate=pipeline_args.generator_learning_rate,
        seed=pipeline_args.seed)
    result["after warm start"] = oracle_by_kind(model, processor, val_task)
    print("result:", json.dumps(result))


if __name__ == "__main__":
    main()
