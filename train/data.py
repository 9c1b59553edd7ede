"""Image–question–answer data: one reader and one writer for every training step.

Rows are kept in TRL's conversational vision format — a `messages` column (user turn = image + question,
assistant turn = answer) and an `images` column (a list of one image) — because that is what
`SFTTrainer` and `trl sft --dataset_name DIR` consume without glue. On disk a dataset is a folder of
Parquet files with the images embedded (`DIR/train.parquet`, `DIR/test.parquet`), which
`datasets.load_dataset(DIR)` reads back split by split.

The seed's CSV (`image,question,answer`, image paths relative to the CSV) and JSON/JSONL files with the
same keys are read here too, and validated here only: a bad row is reported by file, row and column.
"""

import csv
import json
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from train.cli import InvalidInput

PAIR_COLUMNS = ("image", "question", "answer")


def conversation(question: str, answer: str | None = None) -> list[dict]:
    """TRL conversational messages with one image slot before the question (and the answer, if given)."""
    messages = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": question}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def conversation_row(image: Image.Image, question: str, answer: str) -> dict:
    return {"messages": conversation(question, answer), "images": [image]}


def row_question_answer(row: dict) -> tuple[str, str]:
    """(question, answer) texts of a conversational row."""
    user, assistant = row["messages"][0], row["messages"][-1]
    question = "".join(part["text"] for part in user["content"] if part["type"] == "text")
    answer = "".join(part["text"] for part in assistant["content"] if part["type"] == "text")
    return question, answer


def write_parquet_splits(splits: dict[str, list[dict]], output_dir: str | os.PathLike) -> None:
    """Write `{split: rows}` as `output_dir/{split}.parquet` with images embedded (PNG bytes)."""
    from datasets import Dataset

    os.makedirs(output_dir, exist_ok=True)
    for split, rows in splits.items():
        Dataset.from_list(rows).cast_column("images", _image_list_feature()).to_parquet(
            os.path.join(output_dir, f"{split}.parquet"))


def _image_list_feature():
    from datasets import Image as ImageFeature
    from datasets import Sequence

    return Sequence(ImageFeature())


def open_image(path: Path, where: str) -> Image.Image:
    """Open and fully decode an image, or raise `InvalidInput` naming `where` (file, row, column)."""
    if not path.is_file():
        raise InvalidInput(f"{where}: image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InvalidInput(f"{where}: cannot read image {path} ({error})") from None


def _records_from_file(path: Path) -> list[dict]:
    """Raw records of a CSV, JSON (list of objects) or JSONL file, with a clear error for malformed files."""
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in PAIR_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InvalidInput(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(PAIR_COLUMNS)})")
            return list(reader)
    try:
        if path.suffix == ".jsonl":
            lines = path.read_text(encoding="utf-8").splitlines()
            return [json.loads(line) for line in lines if line.strip()]
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InvalidInput(f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}") from None
    if not isinstance(records, list):
        raise InvalidInput(f"{path}: expected a JSON list of objects with keys {', '.join(PAIR_COLUMNS)}")
    return records


def read_pairs_file(path: str | os.PathLike) -> list[dict]:
    """Conversational rows from the seed's CSV or a JSON/JSONL file of `{image, question, answer}` records.

    Image paths are relative to the file. Every row is checked; the first bad one raises `InvalidInput`
    naming the file, the row (1-based, header excluded) and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    rows = []
    for number, record in enumerate(_records_from_file(path), start=1):
        if not isinstance(record, dict):
            raise InvalidInput(f"{path}, row {number}: expected an object with keys {', '.join(PAIR_COLUMNS)}")
        for column in PAIR_COLUMNS:
            value = record.get(column)
            if not isinstance(value, str) or not value.strip():
                raise InvalidInput(f"{path}, row {number}, column '{column}': missing or empty")
        image = open_image(path.parent / record["image"], f"{path}, row {number}, column 'image'")
        rows.append(conversation_row(image, record["question"].strip(), record["answer"].strip()))
    if not rows:
        raise InvalidInput(f"{path}: no rows")
    return rows


def load_conversations(source: str | os.PathLike, split: str = "train"):
    """A `datasets.Dataset` of conversational rows from a CSV/JSON/JSONL file or a Parquet dataset folder."""
    from datasets import Dataset, load_dataset

    source = Path(source)
    if source.is_dir():
        files = {p.stem: str(p) for p in source.glob("*.parquet")}
        if split not in files:
            raise InvalidInput(f"{source}: no {split}.parquet (found: {', '.join(sorted(files)) or 'none'})")
        dataset = load_dataset("parquet", data_files={split: files[split]}, split=split)
        missing = [c for c in ("messages", "images") if c not in dataset.column_names]
        if missing:
            raise InvalidInput(f"{files[split]}: missing column(s) {', '.join(missing)}")
        return dataset
    return Dataset.from_list(read_pairs_file(source)).cast_column("images", _image_list_feature())
