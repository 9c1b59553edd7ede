"""The bundled digits VQA data: scikit-learn's `load_digits()` (1,797 handwritten 8×8 digits) as visual question
answering, "What digit is shown in this image?" → "7".

Each image is the original 8×8 greyscale picture with values mapped to 0–255 by round(v * 255 / 16); resizing to
the model's input size is the processor's job, so a user's own 8×8 digit works the same way. The split is fixed:
test = images whose index is divisible by 5.
"""

import csv
import os

import numpy as np
from PIL import Image

DIGIT_QUESTION = "What digit is shown in this image?"


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
