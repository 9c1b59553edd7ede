"""Multiple-choice retrieval VQA data: the one reader and validator of the seed CSV.

The seed CSV has one row per question: `question_text`, `question_image` (a path relative to the CSV, may be
empty), `answer_choices` (JSON list of strings), `label` (index into the choices) and `documents` (JSON list of
the row's relevant documents: a string or `{"text": ...}` is a text document, `{"image": "path.png"}` an image
document). The retrieval corpus is the union of every row's documents plus an optional JSONL file of distractor
documents (one item per line, same format, paths relative to that file). Every value is checked here, once;
the first bad one raises `InvalidInput` naming the file, the row (1-based, header excluded) and the column.

A document is a dict `{"text": str | None, "image": PIL.Image | None}` (exactly one set), the row layout of the
retriever's document index.

The bundled task written in this format is `train.bundled_data.retrieval_vqa`.
"""

import csv
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from train.common.cli import InvalidInput
from train.common.vqa_data import open_image, read_text_file

logger = logging.getLogger(__name__)
RETRIEVAL_COLUMNS = ("question_text", "question_image", "answer_choices", "label", "documents")
DOCUMENTS_COLUMN = "documents"  # optional when a corpus file is given: the answers alone then teach the retriever


@dataclass
class RetrievalExample:
    """One multiple-choice question, with the ids of its gold documents in the task's corpus."""

    question: str
    image: Image.Image | None
    answer_choices: list[str]
    label: int
    gold_document_ids: list[int]


@dataclass
class RetrievalTask:
    """Questions and the corpus they are answered from (`corpus[i]` is document id `i`)."""

    examples: list[RetrievalExample]
    corpus: list[dict]

    @property
    def has_gold_documents(self) -> bool:
        return any(example.gold_document_ids for example in self.examples)

    def without_gold_documents(self) -> "RetrievalTask":
        """The same questions and corpus with the gold-document labels dropped (answers-only supervision)."""
        return RetrievalTask([RetrievalExample(e.question, e.image, e.answer_choices, e.label, [])
                              for e in self.examples], self.corpus)

    def documents(self, ids) -> list[dict]:
        """The documents with these ids. An id of -1 (FAISS's "no result": an IVF/HNSW index can find fewer
        documents than asked) is skipped and logged, never read as `corpus[-1]`."""
        ids = [int(i) for i in ids]
        missing = sum(i < 0 for i in ids)
        if missing:
            logger.warning("%d of %d retrieved document ids are -1 (the index found fewer documents than asked); "
                           "they are skipped.", missing, len(ids))
        return [self.corpus[i] for i in ids if i >= 0]


class _CorpusBuilder:
    """Collects documents once each (text by its text, image by its resolved path) and hands out their ids."""

    def __init__(self):
        self.documents: list[dict] = []
        self._ids: dict[str, int] = {}

    def add(self, item, base: Path, where: str) -> int:
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict) or len(item) != 1 or not isinstance(next(iter(item.values())), str):
            raise InvalidInput(f'{where}: a document must be a string, {{"text": "..."}} or {{"image": "path"}}, '
                               f"got {json.dumps(item)[:80]}")
        kind, value = next(iter(item.items()))
        if kind not in ("text", "image") or not value.strip():
            raise InvalidInput(f'{where}: a document must be a non-empty string, {{"text": "..."}} or '
                               f'{{"image": "path"}}, got {json.dumps(item)[:80]}')
        key = f"text:{value}" if kind == "text" else f"image:{(base / value).resolve()}"
        if key not in self._ids:
            image = open_image(base / value, where) if kind == "image" else None
            self._ids[key] = len(self.documents)
            self.documents.append({"text": value if kind == "text" else None, "image": image})
        return self._ids[key]


def _json_cell(record: dict, column: str, where: str):
    if record[column] is None:  # csv.DictReader's value for a cell the row is missing
        raise InvalidInput(f"{where}, column '{column}': missing (the row has fewer cells than the header)")
    try:
        return json.loads(record[column])
    except json.JSONDecodeError as error:
        raise InvalidInput(f"{where}, column '{column}': invalid JSON ({error.msg} at character {error.pos})") from None


def _read_rows(path: Path, documents_optional: bool = False) -> list[dict]:
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    reader = csv.DictReader(io.StringIO(read_text_file(path), newline=""))
    required = [c for c in RETRIEVAL_COLUMNS if not (documents_optional and c == DOCUMENTS_COLUMN)]
    missing = [column for column in required if column not in (reader.fieldnames or [])]
    if missing:
        raise InvalidInput(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(RETRIEVAL_COLUMNS)})")
    try:
        rows = list(reader)
    except csv.Error as error:  # e.g. a cell over csv.field_size_limit()
        raise InvalidInput(f"{path}, row {reader.line_num}: {error}") from None
    if not rows:
        raise InvalidInput(f"{path}: no rows")
    return rows


def _read_example(record: dict, path: Path, number: int, corpus: _CorpusBuilder) -> RetrievalExample:
    where = f"{path}, row {number}"
    question = (record["question_text"] or "").strip()
    if not question:
        raise InvalidInput(f"{where}, column 'question_text': missing or empty")
    image_path = (record["question_image"] or "").strip()
    image = open_image(path.parent / image_path, f"{where}, column 'question_image'") if image_path else None

    choices = _json_cell(record, "answer_choices", where)
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise InvalidInput(f"{where}, column 'answer_choices': expected a JSON list of at least 2 non-empty strings")
    try:
        label = int(record["label"])
    except (TypeError, ValueError):
        raise InvalidInput(f"{where}, column 'label': {record['label']!r} is not an integer") from None
    if not 0 <= label < len(choices):
        raise InvalidInput(f"{where}, column 'label': {label} is out of range for {len(choices)} answer choices "
                           f"(0 to {len(choices) - 1})")

    if record.get(DOCUMENTS_COLUMN, "") == "":  # no column, or an empty cell: learn from the answer alone
        return RetrievalExample(question, image, choices, label, [])
    documents = _json_cell(record, "documents", where)
    if not isinstance(documents, list) or not documents:
        raise InvalidInput(f"{where}, column 'documents': expected a non-empty JSON list of documents")
    gold = [corpus.add(item, path.parent, f"{where}, column 'documents', item {i + 1}")
            for i, item in enumerate(documents)]
    return RetrievalExample(question, image, choices, label, list(dict.fromkeys(gold)))


def _add_corpus_jsonl(path: str | os.PathLike, corpus: _CorpusBuilder) -> None:
    """Add the documents of a JSONL corpus file (one document per line) to `corpus`."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidInput(f"{path}, line {number}: invalid JSON ({error.msg} at character {error.pos})") from None
        corpus.add(item, path.parent, f"{path}, line {number}")


def load_retrieval_task(csv_path: str | os.PathLike, corpus_path: str | os.PathLike | None = None) -> RetrievalTask:
    """Read and validate a seed CSV (and an optional corpus of further documents) into questions and their corpus.

    The `documents` column (a row's gold documents) may be left out, or a cell left empty, when `corpus_path` is
    given: those questions then have no gold documents (`gold_document_ids == []`) and the retriever learns them
    from the answers alone. Without `corpus_path` the column is required (there would be nothing to retrieve).
    """
    path = Path(csv_path)
    corpus = _CorpusBuilder()
    examples = [_read_example(record, path, number, corpus)
                for number, record in enumerate(_read_rows(path, documents_optional=corpus_path is not None),
                                                start=1)]
    if corpus_path is not None:
        _add_corpus_jsonl(corpus_path, corpus)
    return RetrievalTask(examples, corpus.documents)
