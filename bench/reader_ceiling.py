"""Where the tiny generator's reading stops: oracle accuracy (the gold document read) by question kind, before and
after the gold warm start, and whether its vision names the pictured digit, on a task's validation split.

    python -m train.make_dataset passages --output_dir /tmp/data/passages
    OMP_NUM_THREADS=1 python -m bench.reader_ceiling /tmp/data/passages    # ≈ 3 min with the stand-in kept on disk

The oracle column of docs/retriever_generator.md is the ceiling retrieval cannot raise; this splits it, so that a
miss is put on the right part: reading a picture's colour ("drawing" questions), finding the sentence about the
pictured digit among several ("digit" questions), or seeing the digit at all. Reads only the validation split.
"""

import argparse
import csv
import json
from pathlib import Path

import torch
from sklearn.datasets import load_digits

from train.retrieval.evaluation import multiple_choice_accuracy
from train.retrieval.generator_stage import warm_start_generator
from train.retrieval.pipeline import TrainRetrieverGeneratorArguments, build_model, load_tasks
from train.retrieval.standins import DIGIT_WORDS

KINDS = ("digit", "drawing")  # catalogue questions ("... what colour is this digit?"), archive ones ("... drawing?")


def oracle_by_kind(model, processor, task) -> dict[str, dict]:
    """{kind: {"questions": n, "oracle": accuracy reading the first gold document}}."""
    result = {}
    for kind in KINDS:
        subset = task.subset([i for i, e in enumerate(task.examples) if kind in e.question])
        if subset.examples:
            read = [subset.documents(e.gold_document_ids[:1]) for e in subset.examples]
            accuracy = multiple_choice_accuracy(model, processor, subset, read, [None] * len(read), None, 16)
            result[kind] = {"questions": len(read), "oracle": accuracy}
    return result


def digits_named(model, processor, task, data: Path) -> dict:
    """Share of the "digit" questions whose pictured digit the generator names ("What digit is this?", greedy); the
    picture's file name (the CSV's `question_image`) is its index in `load_digits`, as `train.make_dataset` writes
    it."""
    targets = load_digits().target
    generator, generator_processor = model.generator, processor.generator_processor
    generator_processor.tokenizer.padding_side = "left"
    prompt = generator_processor.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What digit is this?"}]}], add_generation_prompt=True)
    examples = [e for e in task.examples if "digit" in e.question]
    with open(data / "val.csv", newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if "digit" in row["question_text"]]
    assert [row["question_text"] for row in rows] == [e.question for e in examples], "val.csv and the task disagree"
    digit = [DIGIT_WORDS[targets[int(Path(row["question_image"]).stem)]] for row in rows]
    right = 0
    for start in range(0, len(examples), 32):
        batch = examples[start:start + 32]
        inputs = generator_processor(text=[prompt] * len(batch), images=[[e.image] for e in batch],
                                     return_tensors="pt", padding=True)
        with torch.no_grad():
            output = generator.generate(**inputs, max_new_tokens=8, do_sample=False)
        answers = generator_processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        right += sum(answer.strip() == expected for answer, expected in zip(answers, digit[start:start + 32]))
    return {"questions": len(examples), "digit_named": right / max(1, len(examples))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="A `train.make_dataset` folder with train.csv, val.csv and corpus.jsonl.")
    parser.add_argument("--warm_start_epochs", type=float, default=2, help="As the pipeline's --generator_epochs.")
    parser.add_argument("--output_dir", default="/tmp/reader_ceiling")
    args = parser.parse_args()
    data = Path(args.data)
    pipeline_args = TrainRetrieverGeneratorArguments(
        train_csv=str(data / "train.csv"), val_csv=str(data / "val.csv"), corpus=str(data / "corpus.jsonl"),
        output_dir=args.output_dir, preset="tiny")
    train_task, val_task = load_tasks(pipeline_args)
    model, processor, _ = build_model(pipeline_args, train_task)
    result = {"data": str(data), "stand-in": oracle_by_kind(model, processor, val_task),
              "stand-in vision": digits_named(model, processor, val_task, data)}  # before the task's prompts
    model.generator = warm_start_generator(
        model.generator, processor.generator_processor, train_task,
        [e.gold_document_ids[:1] for e in train_task.examples], model.config.document_template,
        args.output_dir, epochs=args.warm_start_epochs, learning_rate=pipeline_args.generator_learning_rate,
        seed=pipeline_args.seed)
    result["after warm start"] = oracle_by_kind(model, processor, val_task)
    print("result:", json.dumps(result))


if __name__ == "__main__":
    main()
