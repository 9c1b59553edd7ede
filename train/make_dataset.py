"""Write the bundled datasets.

    python -m train.make_dataset digits --output_dir data/digits              # Parquet, TRL conversational
    python -m train.make_dataset digits --output_dir data/digits --format csv # the seed's image,question,answer CSV
    python -m train.make_dataset retrieval_vqa --output_dir data/retrieval   # multiple-choice retrieval VQA CSVs

`digits` is scikit-learn's `load_digits()` (1,797 handwritten 8×8 digits) as visual question answering:
"What digit is shown in this image?" → "7". Each image is the original 8×8 greyscale picture with values
mapped to 0–255 by round(v * 255 / 16); resizing to the model's input size is the processor's job, so a
user's own 8×8 digit works the same way. The split is fixed: test = images whose index is divisible by 5.
"""

import csv
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from train.cli import run_cli
from train.data import conversation_row, write_parquet_splits

DIGIT_QUESTION = "What digit is shown in this image?"


@dataclass
class MakeDatasetArguments:
    dataset: str = field(metadata={"help": "Which bundled dataset to write.", "choices": ["digits", "retrieval_vqa"]})
    output_dir: str = field(metadata={"help": "Folder to write the dataset to."})
    format: str = field(default="parquet", metadata={"help": "parquet: TRL conversational folder; csv: seed CSV.",
                                                     "choices": ["parquet", "csv"]})


def digit_image(pixels: np.ndarray) -> Image.Image:
    """An 8×8 `load_digits` picture (values 0–16) as an 8-bit greyscale image."""
    return Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8), mode="L")


def digits_splits() -> dict[str, list[tuple[int, Image.Image, str]]]:
    """{split: [(index in load_digits, image, answer)]} with test = indices divisible by 5."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    splits = {"train": [], "test": []}
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target)):
        splits["test" if index % 5 == 0 else "train"].append((index, digit_image(pixels), str(int(target))))
    return splits


def write_csv_splits(splits: dict[str, list[tuple[int, Image.Image, str]]], question: str, output_dir: str) -> None:
    """The seed's CSV format: `output_dir/{split}.csv` with image paths relative to it (`images/...png`)."""
    os.makedirs(os.path.join(output_dir, "images"), exist_ok=True)
    for split, items in splits.items():
        with open(os.path.join(output_dir, f"{split}.csv"), "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "question", "answer"])
            for index, image, answer in items:
                relative = f"images/{split}_{index:04d}.png"
                image.save(os.path.join(output_dir, relative))
                writer.writerow([relative, question, answer])


def main(args: MakeDatasetArguments) -> None:
    if args.dataset == "retrieval_vqa":
        from train.retrieval_data import write_retrieval_vqa

        sizes = write_retrieval_vqa(args.output_dir)
        print(f"wrote retrieval_vqa (train: {sizes['train']}, test: {sizes['test']}, corpus distractors: "
              f"{sizes['corpus']}) as seed CSVs to {args.output_dir}")
        return
    splits = digits_splits()
    if args.format == "csv":
        write_csv_splits(splits, DIGIT_QUESTION, args.output_dir)
    else:
        write_parquet_splits({split: [conversation_row(image, DIGIT_QUESTION, answer) for _, image, answer in items]
                              for split, items in splits.items()}, args.output_dir)
    sizes = ", ".join(f"{split}: {len(items)}" for split, items in splits.items())
    print(f"wrote {args.dataset} ({sizes}) as {args.format} to {args.output_dir}")


if __name__ == "__main__":
    run_cli(main, MakeDatasetArguments, positional="dataset")
