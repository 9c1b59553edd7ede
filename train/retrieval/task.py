"""Retrieval VQA data: the one reader and validator of the seed CSV.

The seed CSV has one row per question: `question_text`, `question_image` (a path relative to the CSV, may be
empty), the answer as `answer_choices` (JSON list of strings) + `label` (index into the choices), or as `answers`
(JSON list of reference answers, VQA style: open-ended, repeats and aliases allowed), or both; and `documents` (JSON
list of the row's relevant documents). A document is a string or `{"text": ...}` (a passage), `{"image": "p.png"}`
(a picture) or `{"image": "p.png", "text": ...}` (a picture with its article, embedded as one). The retrieval corpus
is the union of every row's documents plus an optional JSONL file of further documents (one per line, same format,
paths relative to that file). Every value is checked here, once; the first bad one raises `InvalidInput` naming the
file, the row (1-based, header excluded) and the column.

A document is a dict `{"text": str | None, "image": PIL.Image | None}` (at least one set), the row layout of the
retriever's document index; its id is its position in the corpus (the passage id: a passage longer than the text
tower's context is split into chunks by the retriever, and every chunk keeps that id).

The bundled tasks written in this format are in `train.bundled_data`.
"""

import csv
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from train.common.cli import InvalidInput
from train.common.vqa_data import open_image, read_text_file
from train.retrieval.answers import VQA_AGREEMENT, most_common_answer

logger = logging.getLogger(__name__)
RETRIEVAL_COLUMNS = ("question_text", "question_image", "answer_choices", "label", "documents")
ANSWERS_COLUMN = "answers"  # open-ended reference answers: instead of, or beside, answer_choices + label
DOCUMENTS_COLUMN = "documents"  # optional when a corpus file is given: the answers alone then teach the retriever


@dataclass
class RetrievalExample:
    """One question: multiple choice (`answer_choices`, `label`), open-ended (`answers`) or both, with the ids of its
    gold documents in the task's corpus."""

    question: str
    image: Image.Image | None
    answer_choices: list[str] | None
    label: int | None
    gold_document_ids: list[int]
    answers: list[str] | None = None

    @property
    def is_multiple_choice(self) -> bool:
        return self.answer_choices is not None

    @property
    def reference_answers(self) -> list[str]:
        """Every acceptable answer: the reference answers and the right choice."""
        right = [self.answer_choices[self.label]] if self.is_multiple_choice else []
        return list(dict.fromkeys([*(self.answers or []), *right]))

    @property
    def annotator_answers(self) -> list[str]:
        """The reference answers as given, repeats included, which VQA accuracy counts; a multiple-choice question
        without them has its right choice as every annotator's answer."""
        return self.answers or [self.answer_choices[self.label]] * VQA_AGREEMENT

    @property
    def target_answer(self) -> str:
        """What the generator is trained to say: the right choice, else the most common reference answer."""
        return self.answer_choices[self.label] if self.is_multiple_choice else most_common_answer(self.answers)

    @property
    def scored_choices(self) -> tuple[list[str], int]:
        """What the generator scores for this question, and which is right: its answer choices, or, open-ended, its
        target answer alone."""
        return (self.answer_choices, self.label) if self.is_multiple_choice else ([self.target_answer], 0)


def document_key(document: dict) -> tuple:
    """What makes two documents the same: their text and their image's pixels."""
    image = document.get("image")
    pixels = None if image is None else hashlib.sha1(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()
    return document.get("text"), pixels


@dataclass
class RetrievalTask:
    """Questions and the corpus they are answered from (`corpus[i]` is document id `i`)."""

    examples: list[RetrievalExample]
    corpus: list[dict] = field(repr=False)

    @property
    def has_gold_documents(self) -> bool:
        return any(example.gold_document_ids for example in self.examples)

    @property
    def is_multiple_choice(self) -> bool:
        return all(example.is_multiple_choice for example in self.examples)

    def without_gold_documents(self) -> "RetrievalTask":
        """The same questions and corpus with the gold-document labels dropped (answers-only supervision)."""
        return RetrievalTask([replace(e, gold_document_ids=[]) for e in self.examples], self.corpus)

    def subset(self, indices) -> "RetrievalTask":
        return RetrievalTask([self.examples[int(i)] for i in indices], self.corpus)

    def split(self, fraction: float, seed: int = 0) -> tuple["RetrievalTask", "RetrievalTask"]:
        """(the rest, a held-out `fraction` of the questions drawn at random with `seed`), sharing the corpus."""
        order = np.random.default_rng(seed).permutation(len(self.examples))
        n_held_out = int(round(fraction * len(self.examples)))
        if not 0 < n_held_out < len(self.examples):
            raise InvalidInput(f"a validation fraction of {fraction} of {len(self.examples)} questions leaves no "
                               "question on one side")
        return self.subset(np.sort(order[n_held_out:])), self.subset(np.sort(order[:n_held_out]))

    def searching(self, corpus: list[dict]) -> "RetrievalTask":
        """The same questions answered from `corpus` followed by this task's documents that `corpus` lacks (compared
        by `document_key`), with the gold ids pointing into that corpus: evaluation in an open corpus."""
        ids = {document_key(document): i for i, document in enumerate(corpus)}
        merged, remap = list(corpus), []
        for document in self.corpus:
            key = document_key(document)
            if key not in ids:
                ids[key] = len(merged)
                merged.append(document)
            remap.append(ids[key])
        return RetrievalTask([replace(e, gold_document_ids=list(dict.fromkeys(remap[i] for i in e.gold_document_ids)))
                              for e in self.examples], merged)

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
    """Collects documents once each (by their text and resolved image path) and hands out their ids."""

    def __init__(self):
        self.documents: list[dict] = []
        self._ids: dict[tuple, int] = {}

    def add(self, item, base: Path, where: str) -> int:
        if isinstance(item, str):
            item = {"text": item}
        if (not isinstance(item, dict) or not item or not set(item) <= {"text", "image"}
                or not all(isinstance(value, str) and value.strip() for value in item.values())):
            raise InvalidInput(f'{where}: a document must be a non-empty string, {{"text": "..."}}, {{"image": '
                               f'"path"}} or {{"image": "path", "text": "..."}}, got {json.dumps(item)[:80]}')
        text, image_path = item.get("text"), item.get("image")
        key = (text, str((base / image_path).resolve()) if image_path else None)
        if key not in self._ids:
            image = open_image(base / image_path, where) if image_path else None
            self._ids[key] = len(self.documents)
            self.documents.append({"text": text, "image": image})
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
    columns = reader.fieldnames or []
    required = ["question_text", "question_image", *([] if documents_optional else [DOCUMENTS_COLUMN])]
    if ANSWERS_COLUMN not in columns or "answer_choices" in columns or "label" in columns:
        required[2:2] = ["answer_choices", "label"]
    missing = [column for column in required if column not in columns]
    if missing:
        raise InvalidInput(f"{path}: missing column(s) {', '.join(missing)} (expected question_text, question_image, "
                           f"answer_choices + label and/or {ANSWERS_COLUMN}, {DOCUMENTS_COLUMN})")
    try:
        rows = list(reader)
    except csv.Error as error:  # e.g. a cell over csv.field_size_limit()
        raise InvalidInput(f"{path}, row {reader.line_num}: {error}") from None
    if not rows:
        raise InvalidInput(f"{path}: no rows")
    return rows


def _read_choices(record: dict, where: str) -> tuple[list[str], int]:
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
    return choices, label


def _read_example(record: dict, path: Path, number: int, corpus: _CorpusBuilder) -> RetrievalExample:
    where = f"{path}, row {number}"
    question = (record["question_text"] or "").strip()
    if not question:
        raise InvalidInput(f"{where}, column 'question_text': missing or empty")
    image_path = (record["question_image"] or "").strip()
    image = open_image(path.parent / image_path, f"{where}, column 'question_image'") if image_path else None

    choices, label = _read_choices(record, where) if "answer_choices" in record else (None, None)
    answers = None
    if record.get(ANSWERS_COLUMN, "") != "":
        answers = _json_cell(record, ANSWERS_COLUMN, where)
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise InvalidInput(f"{where}, column '{ANSWERS_COLUMN}': expected a JSON list of non-empty strings")
    elif choices is None:
        raise InvalidInput(f"{where}, column '{ANSWERS_COLUMN}': missing or empty")

    if record.get(DOCUMENTS_COLUMN, "") == "":  # no column, or an empty cell: learn from the answer alone
        return RetrievalExample(question, image, choices, label, [], answers)
    documents = _json_cell(record, DOCUMENTS_COLUMN, where)
    if not isinstance(documents, list) or not documents:
        raise InvalidInput(f"{where}, column 'documents': expected a non-empty JSON list of documents")
    gold = [corpus.add(item, path.parent, f"{where}, column 'documents', item {i + 1}")
            for i, item in enumerate(documents)]
    return RetrievalExample(question, image, choices, label, list(dict.fromkeys(gold)), answers)


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


def load_corpus(path: str | os.PathLike) -> list[dict]:
    """The documents of a JSONL corpus file."""
    corpus = _CorpusBuilder()
    _add_corpus_jsonl(path, corpus)
    return corpus.documents


def load_retrieval_task(csv_path: str | os.PathLike, corpus_path: str | os.PathLike | None = None,
                        documents_optional: bool | None = None) -> RetrievalTask:
    """Read and validate a seed CSV (and an optional corpus of further documents) into questions and their corpus.

    The `documents` column (a row's gold documents) may be left out, or a cell left empty, when `corpus_path` is
    given (or `documents_optional`: the corpus comes from elsewhere, e.g. a saved index): those questions then have
    no gold documents (`gold_document_ids == []`) and the retriever learns them from the answers alone. Otherwise the
    column is required (there would be nothing to retrieve).
    """
    path = Path(csv_path)
    corpus = _CorpusBuilder()
    if documents_optional is None:
        documents_optional = corpus_path is not None
    examples = [_read_example(record, path, number, corpus)
                for number, record in enumerate(_read_rows(path, documents_optional), start=1)]
    if corpus_path is not None:
        _add_corpus_jsonl(corpus_path, corpus)
    return RetrievalTask(examples, corpus.documents)
