"""Exact-match accuracy of a SigPhi model on a split of a VQA dataset, with a table of sample answers.

    python -m train.evaluate --model outputs/quickstart/sigphi --dataset data/digits --split test

Each question goes through the model's own chat template and `generate` (greedy, batched with left
padding), as a user would ask it. Answers are compared after normalisation (case, surrounding space and
final punctuation), which is what "exact match" means for short answers.
"""

import json
import string
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from train.cli import run_cli
from train.data import conversation, load_conversations, row_question_answer
from train.training import load_sigphi


@dataclass
class EvaluateArguments:
    model: str = field(metadata={"help": "SigPhi folder (or Hub id) to evaluate."})
    dataset: str = field(metadata={"help": "Parquet dataset folder, seed CSV, or JSON/JSONL file."})
    split: str = field(default="test", metadata={"help": "Split of a dataset folder."})
    batch_size: int = field(default=32, metadata={"help": "Questions per generate call."})
    max_new_tokens: int = field(default=16, metadata={"help": "Longest answer generated."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows."})
    show: int = field(default=10, metadata={"help": "Rows of sample answers to print."})
    output_file: str | None = field(default=None, metadata={"help": "Also write the metrics as JSON here."})


def normalise(answer: str) -> str:
    return answer.strip().strip(string.punctuation + " ").lower()


@torch.no_grad()
def evaluate_model(model, processor, dataset, batch_size: int = 32, max_new_tokens: int = 16) -> dict:
    """{'accuracy', 'n', 'samples': [(question, expected, answer)]} for conversational rows."""
    model.eval()
    processor.tokenizer.padding_side = "left"
    samples, correct = [], 0
    for start in tqdm(range(0, len(dataset), batch_size), desc="evaluating", unit="batch"):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
        pairs = [row_question_answer(row) for row in rows]
        prompts = [processor.apply_chat_template(conversation(question), add_generation_prompt=True)
                   for question, _ in pairs]
        inputs = processor(text=prompts, images=[row["images"] for row in rows], return_tensors="pt",
                           padding=True).to(model.device)
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers = processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        for (question, expected), answer in zip(pairs, answers):
            correct += normalise(answer) == normalise(expected)
            samples.append((question, expected, answer.strip()))
    return {"accuracy": correct / max(len(samples), 1), "n": len(samples), "samples": samples}


def format_table(samples: list[tuple[str, str, str]], limit: int) -> str:
    lines = ["| question | expected | answer | ok |", "|---|---|---|---|"]
    for question, expected, answer in samples[:limit]:
        ok = "✓" if normalise(answer) == normalise(expected) else "✗"
        lines.append(f"| {question} | {expected} | {answer} | {ok} |")
    return "\n".join(lines)


def main(args: EvaluateArguments) -> None:
    dataset = load_conversations(args.dataset, args.split)
    if args.max_samples:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    model, processor = load_sigphi(args.model)
    result = evaluate_model(model, processor, dataset, args.batch_size, args.max_new_tokens)
    print(format_table(result["samples"], args.show))
    metrics = {"accuracy": result["accuracy"], "n": result["n"]}
    print(json.dumps(metrics))
    if args.output_file:
        with open(args.output_file, "w", encoding="utf-8") as handle:
            json.dump(metrics, handle, indent=2)


if __name__ == "__main__":
    run_cli(main, EvaluateArguments)
