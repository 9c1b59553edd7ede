"""The bundled digits dataset: exactly the contract of DESIGN.md §3, loadable by `datasets` and TRL."""

import csv
import subprocess
import sys

import numpy as np
import pytest
from datasets import load_dataset
from PIL import Image
from sklearn.datasets import load_digits

from train.common.vqa_data import load_conversations, row_question_answer


@pytest.fixture(scope="module")
def digits_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    for fmt in ("parquet", "csv"):
        result = subprocess.run([sys.executable, "-m", "train.make_dataset", "digits", "--output_dir",
                                 str(root / fmt), "--format", fmt], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
    return root


def test_parquet_folder_loads_with_datasets_with_the_fixed_split(digits_dirs):
    dataset = load_dataset(str(digits_dirs / "parquet"))
    digits = load_digits()
    test_indices = [i for i in range(len(digits.images)) if i % 5 == 0]
    assert set(dataset) == {"train", "test"}
    assert len(dataset["test"]) == len(test_indices) == 360 and len(dataset["train"]) == 1437
    assert dataset["train"].column_names == ["messages", "images"]
    for row, index in zip(dataset["test"].select(range(20)), test_indices):
        assert row["messages"][0]["content"][0]["type"] == "image"
        assert row_question_answer(row) == ("What digit is shown in this image?", str(digits.target[index]))
        image = row["images"][0]
        assert len(row["images"]) == 1 and image.mode == "L" and image.size == (8, 8)
        assert np.array_equal(np.asarray(image), np.round(digits.images[index] * 255 / 16).astype(np.uint8))


def test_csv_format_is_the_seeds_with_paths_relative_to_the_csv(digits_dirs):
    folder = digits_dirs / "csv"
    with open(folder / "test.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["image", "question", "answer"] and len(rows) == 360
    assert Image.open(folder / rows[0]["image"]).size == (8, 8)
    from_csv = load_conversations(folder / "test.csv")
    from_parquet = load_conversations(digits_dirs / "parquet", "test")
    assert [row_question_answer(r) for r in from_csv] == [row_question_answer(r) for r in from_parquet]
