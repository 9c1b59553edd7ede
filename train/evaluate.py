"""Exact-match accuracy of a SigPhi model on a split of a VQA dataset, with a table of sample answers.

    python -m train.evaluate --model outputs/quickstart/sigphi --dataset data/digits --split test

Each question goes through the model's own chat template and `generate` (greedy, batched with left
padding), as a user would ask it. Answers are compared after normalisation (case, surrounding space and
final punctuation), which is what "exact match" means for short answers.
"""

import json
from dataclasses import dataclass, field

from train.common.cli import run_cli
from train.common.vqa_data import load_conversations
from train.sigphi.evaluation import evaluate_sigphi, format_table
from train.sigphi.loading import load_sigphi


@dataclass
class SigPhiEvaluateArguments:
    model: str = field(metadata={"help": "SigPhi folder (or Hub id) to evaluate."})
    dataset: str = field(metadata={"help": "Parquet dataset folder, seed CSV, or JSON/JSONL file."})
    split: str = field(default="test", metadata={"help": "Split of a dataset folder."})
    batch_size: int = field(default=32, metadata={"help": "Questions per generate call."})
    max_new_tokens: int = field(default=16, metadata={"help": "Longest answer generated."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows."})
    show: int = field(default=10, metadata={"help": "Rows of sample answers to print."})
    output_file: str | None = field(default=None, metadata={"help": "Also write the metrics as JSON here."})


def main(args: SigPhiEvaluateArguments) -> None:
    dataset = load_conversations(args.dataset, args.split)
    if args.max_samples:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    model, processor = load_sigphi(args.model)
    result = evaluate_sigphi(model, processor, dataset, args.batch_size, args.max_new_tokens)
    print(format_table(result["samples"], args.show))
    metrics = {"accuracy": result["accuracy"], "n": result["n"]}
    print(json.dumps(metrics))
    if args.output_file:
        with open(args.output_file, "w", encoding="utf-8") as handle:
            json.dump(metrics, handle, indent=2)


if __name__ == "__main__":
    run_cli(main, SigPhiEvaluateArguments)
