"""One reader for image–question–answer files: every bad row is named by file, row and column."""

import json

import pytest
from PIL import Image

from train.common.cli import InvalidInput
from train.common.vqa_data import load_conversations, read_pairs_file, row_question_answer


@pytest.fixture
def folder(tmp_path):
    Image.new("L", (8, 8), 200).save(tmp_path / "ok.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return tmp_path


def write_csv(folder, lines: list[str]):
    path = folder / "data.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_json_and_jsonl_give_the_same_conversations(folder):
    records = [{"image": "ok.png", "question": "What is it?", "answer": "grey"}]
    csv_path = write_csv(folder, ["image,question,answer", "ok.png,What is it?,grey"])
    (folder / "data.json").write_text(json.dumps(records))
    (folder / "data.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    for path in (csv_path, folder / "data.json", folder / "data.jsonl"):
        rows = read_pairs_file(path)
        assert [row_question_answer(r) for r in rows] == [("What is it?", "grey")]
        assert rows[0]["images"][0].size == (8, 8)


@pytest.mark.parametrize("lines, message", [
    (["image,question", "ok.png,Q"], "missing column(s) answer"),
    (["image,question,answer", "ok.png,Q,"], "row 1, column 'answer': missing or empty"),
    (["image,question,answer", "ok.png,Q,a", "missing.png,Q,a"], "row 2, column 'image': image file not found"),
    (["image,question,answer", "empty.png,Q,a"], "row 1, column 'image': cannot read image"),
    (["image,question,answer", "corrupt.png,Q,a"], "row 1, column 'image': cannot read image"),
    (["image,question,answer"], "no rows"),
])
def test_bad_csv_rows_are_named(folder, lines, message):
    path = write_csv(folder, lines)
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        read_pairs_file(path)
    assert str(path) in str(error.value)


def test_bad_json_is_located(folder):
    (folder / "bad.json").write_text('[{"image": "ok.png",}]')
    with pytest.raises(InvalidInput, match=r"bad.json: invalid JSON at line 1, column \d+"):
        read_pairs_file(folder / "bad.json")


def test_dataset_folder_without_the_split_says_what_it_has(folder):
    with pytest.raises(InvalidInput, match="no validation.parquet"):
        load_conversations(folder, "validation")
