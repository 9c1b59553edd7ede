"""Multiple-choice retrieval VQA data: the one reader and validator of the seed CSV, and the bundled task.

The seed CSV has one row per question: `question_text`, `question_image` (a path relative to the CSV, may be
empty), `answer_choices` (JSON list of strings), `label` (index into the choices) and `documents` (JSON list of
the row's relevant documents: a string or `{"text": ...}` is a text document, `{"image": "path.png"}` an image
document). The retrieval corpus is the union of every row's documents plus an optional JSONL file of distractor
documents (one item per line, same format, paths relative to that file). Every value is checked here, once;
the first bad one raises `InvalidInput` naming the file, the row (1-based, header excluded) and the column.

A document is a dict `{"text": str | None, "image": PIL.Image | None}` (exactly one set), the row layout of the
retriever's document index.

The bundled task (`python -m train.make_dataset retrieval_vqa`) is built so that retrieval is necessary and
multimodal: its answers exist only in randomly generated facts, and the right fact is found only from the image
and the question together. See `write_retrieval_vqa`.
"""

import csv
import io
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from train.cli import InvalidInput
from train.data import open_image, read_text_file

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


# The bundled task ------------------------------------------------------------------------------------------

COLOURS = {"red": (230, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 240), "yellow": (240, 220, 40),
           "purple": (160, 60, 210), "orange": (250, 140, 20), "pink": (250, 130, 200), "cyan": (40, 210, 220)}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SYLLABLES = ("ka", "lo", "mi", "ra", "ve", "zu", "to", "sen", "dor", "bel", "qui", "nax", "po", "rin", "tal",
             "mur", "fi", "gon", "sha", "lek", "vo", "dre", "pim", "sal")
N_CHOICES = 4


def catalogue_question(catalogue: str) -> str:
    return f"In the {catalogue} catalogue, what colour is this digit?"


def catalogue_fact(catalogue: str, digit: int, colour: str) -> str:
    return f"In the {catalogue} catalogue, the digit {DIGIT_WORDS[digit]} is {colour}."


ARCHIVE_QUESTION = "In the sample archive, what colour is this drawing?"


def painted(image: Image.Image, colour: str) -> Image.Image:
    """An 8-bit greyscale digit drawn in `colour` on black: the archive's picture of that very drawing."""
    ink = np.asarray(image, dtype=np.float32)[..., None] / 255.0
    return Image.fromarray(np.round(ink * np.array(COLOURS[colour], dtype=np.float32)).astype(np.uint8), mode="RGB")


def catalogue_names(rng: random.Random, count: int) -> list[str]:
    """`count` distinct made-up names ("Kalomi"): the byte-level tokenizers split unseen ones into syllables."""
    names = set()
    while len(names) < count:
        names.add("".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize())
    return sorted(sorted(names), key=lambda _: rng.random())  # sorted first: set order varies by process


def _choices(rng: random.Random, answer: str) -> tuple[list[str], int]:
    choices = rng.sample([c for c in COLOURS if c != answer], N_CHOICES - 1) + [answer]
    rng.shuffle(choices)
    return choices, choices.index(answer)


def _write_rows(path: Path, rows: list, with_documents: bool = True) -> None:
    columns = RETRIEVAL_COLUMNS if with_documents else RETRIEVAL_COLUMNS[:-1]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for image_path, question, choices, label, documents, *_ in rows:
            writer.writerow([question, image_path, json.dumps(choices), label, json.dumps(documents)][:len(columns)])


def write_retrieval_vqa(output_dir: str | os.PathLike, n_train_catalogues: int = 150, n_test_catalogues: int = 10,
                        n_train_archive: int = 300, n_test_archive: int = 100, n_distractor_catalogues: int = 20,
                        n_distractor_drawings: int = 100, seed: int = 0) -> dict[str, int]:
    """Write `train.csv`, `test.csv`, `corpus.jsonl` and `images/` of the bundled retrieval task.

    Two kinds of question, both answered only by a randomly drawn colour (so without documents a model is at
    chance), both needing the image *and* the text to find the document among distractors:

    - catalogue: "In the Kalomi catalogue, what colour is this digit?" with a handwritten digit. The gold
      text document "In the Kalomi catalogue, the digit seven is red." sits among the same catalogue's other
      digits (text alone is not enough) and other catalogues' sevens (the image alone is not enough).
    - archive: "In the sample archive, what colour is this drawing?" The gold *image* document is that very
      drawing painted in its colour, among other painted drawings of the same digit and the catalogue facts
      about it.

    Train and test use disjoint catalogues and disjoint drawings (test = `load_digits` indices divisible by 5),
    so test facts were never seen in training; catalogue questions show drawings no archive picture shows.
    `corpus.jsonl` adds distractors from a third set of catalogues and drawings, for training and evaluation alike.
    Also written: `train_answers_only.csv` (the training questions without the `documents` column) with
    `train_documents.jsonl` (their documents and the distractors, the corpus to retrieve from when training from
    the answers alone), and `test_swapped.csv` (the test questions with every fact's colour drawn anew: same images
    and catalogues, different answers). Returns the number of rows per file.
    """
    from train.make_dataset import digits_splits

    rng = random.Random(seed)
    output_dir = Path(output_dir)
    (output_dir / "images").mkdir(parents=True, exist_ok=True)
    splits = digits_splits()
    drawings = {split: rng.sample(items, len(items)) for split, items in splits.items()}
    names = catalogue_names(rng, n_train_catalogues + n_test_catalogues + n_distractor_catalogues)
    catalogues = {"train": names[:n_train_catalogues],
                  "test": names[n_train_catalogues:n_train_catalogues + n_test_catalogues]}
    n_archive = {"train": n_train_archive, "test": n_test_archive}

    def save(image: Image.Image, name: str) -> str:
        image.save(output_dir / "images" / name)
        return f"images/{name}"

    sizes, written = {}, {}
    swap_rng = random.Random(seed + 1)  # its own generator: the files above stay what they were
    for split in ("train", "test"):
        painted_drawings = n_archive[split] + (n_distractor_drawings if split == "train" else 0)
        by_digit = {}  # the drawings no archive picture shows, by digit
        for index, image, answer in drawings[split][painted_drawings:]:
            by_digit.setdefault(int(answer), []).append((index, image))
        rows = []
        for catalogue in catalogues[split]:
            for digit in range(10):
                colour = rng.choice(list(COLOURS))
                index, image = rng.choice(by_digit[digit])
                choices, label = _choices(rng, colour)
                rows.append([save(image, f"{index:04d}.png"), catalogue_question(catalogue), choices, label,
                             [catalogue_fact(catalogue, digit, colour)], (catalogue, digit, colour)])
        for index, image, _ in drawings[split][:n_archive[split]]:
            colour = rng.choice(list(COLOURS))
            choices, label = _choices(rng, colour)
            rows.append([save(image, f"{index:04d}.png"), ARCHIVE_QUESTION, choices, label,
                         [{"image": save(painted(image, colour), f"{index:04d}_{colour}.png")}],
                         (index, image, colour)])
        rng.shuffle(rows)
        _write_rows(output_dir / f"{split}.csv", rows)
        written[split] = rows
        sizes[split] = len(rows)

    distractors = [catalogue_fact(catalogue, digit, rng.choice(list(COLOURS)))
                   for catalogue in names[n_train_catalogues + n_test_catalogues:] for digit in range(10)]
    for index, image, _ in drawings["train"][n_train_archive:n_train_archive + n_distractor_drawings]:
        colour = rng.choice(list(COLOURS))
        distractors.append({"image": save(painted(image, colour), f"{index:04d}_{colour}.png")})
    with open(output_dir / "corpus.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(item) + "\n" for item in distractors)
    sizes["corpus"] = len(distractors)

    # Answers only: the training questions without their documents column; the documents go to the corpus file.
    _write_rows(output_dir / "train_answers_only.csv", written["train"], with_documents=False)
    train_documents = list({json.dumps(doc): doc for row in written["train"] for doc in row[4]}.values())
    with open(output_dir / "train_documents.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(item) + "\n" for item in train_documents + distractors)

    # Facts swapped: the same test questions (same images, same catalogues), every fact's colour drawn anew.
    swapped = []
    for image_path, question, _, _, _, (key, detail, colour) in written["test"]:
        new_colour = swap_rng.choice([c for c in COLOURS if c != colour])
        choices, label = _choices(swap_rng, new_colour)
        if isinstance(key, str):  # a catalogue fact
            document = catalogue_fact(key, detail, new_colour)
        else:  # an archive drawing, painted anew
            document = {"image": save(painted(detail, new_colour), f"{key:04d}_{new_colour}.png")}
        swapped.append([image_path, question, choices, label, [document], None])
    _write_rows(output_dir / "test_swapped.csv", swapped)
    sizes["test_swapped"] = len(swapped)
    return sizes
