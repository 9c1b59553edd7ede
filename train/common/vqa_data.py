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
import io
import json
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from processing import IMAGE_TOKEN
from train.common.cli import InvalidInput

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


def read_text_file(path: Path) -> str:
    """The file's text, newlines untouched (the CSV reader handles them), or `InvalidInput` if it is not UTF-8."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput(f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); "
                           "save it as UTF-8") from None


def _json_value(text: str, where: str, first_line: int = 1):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"{where}: invalid JSON at line {first_line + error.lineno - 1}, column {error.colno}: "
                           f"{error.msg}") from None


def _records_from_file(path: Path) -> list[dict]:
    """Raw records of a CSV, JSON (list of objects) or JSONL file, with a clear error for malformed files."""
    text = read_text_file(path)
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in PAIR_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InvalidInput(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(PAIR_COLUMNS)})")
        records = []
        try:
            records.extend(reader)
        except csv.Error as error:  # e.g. a cell over csv.field_size_limit()
            raise InvalidInput(f"{path}, row {len(records) + 1}: {error}") from None
        return records
    if path.suffix == ".jsonl":
        return [_json_value(line, str(path), number) for number, line in enumerate(text.splitlines(), start=1)
                if line.strip()]
    records = _json_value(text, str(path))
    if not isinstance(records, list):
        raise InvalidInput(f"{path}: expected a JSON list of objects with keys {', '.join(PAIR_COLUMNS)}")
    return records


def _require_text(value, where: str) -> None:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidInput(f"{where}: missing or empty")
    if not isinstance(value, str):
        raise InvalidInput(f"{where}: expected text, got {type(value).__name__} {json.dumps(value)[:40]}")


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
            _require_text(record.get(column), f"{path}, row {number}, column '{column}'")
        for column in ("question", "answer"):
            # `conversation` places the image itself: one more placeholder would outnumber the row's one image.
            if IMAGE_TOKEN in record[column]:
                raise InvalidInput(f"{path}, row {number}, column '{column}': contains the image placeholder "
                                   f"{IMAGE_TOKEN!r}; the image is placed before the question by itself")
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
        _check_image_placeholders(dataset, files[split])
        return dataset
    return Dataset.from_list(read_pairs_file(source)).cast_column("images", _image_list_feature())


def _count_placeholders(content) -> int:
    """Image placeholders in one message's content: image parts, and any `<image>` typed into its text."""
    if isinstance(content, str):
        return content.count(IMAGE_TOKEN)
    return sum(1 if part["type"] == "image" else (part.get("text") or "").count(IMAGE_TOKEN) for part in content)


def _check_image_placeholders(dataset, path: str) -> None:
    """Every row needs one image per placeholder; otherwise TRL's collator stops mid-training with the processor's
    error, which names no row. Image counts come from the Arrow lists, so no image is decoded here."""
    import pyarrow.compute as pc

    n_images = pc.list_value_length(dataset.data.column("images")).fill_null(0).to_pylist()
    for number, (row, images) in enumerate(zip(dataset.select_columns(["messages"]), n_images), start=1):
        placeholders = sum(_count_placeholders(message["content"]) for message in row["messages"])
        if placeholders != images:
            raise InvalidInput(f"{path}, row {number}, column 'messages': {placeholders} image placeholder(s) for "
                               f"{images} image(s) in column 'images'")
