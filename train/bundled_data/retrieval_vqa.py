"""The bundled multiple-choice retrieval VQA task (`python -m train.make_dataset retrieval_vqa`), written as seed CSVs.

It is built so that retrieval is necessary and multimodal: its answers exist only in randomly generated facts, and
the right fact is found only from the image and the question together. See `write_retrieval_vqa`.
"""

import csv
import json
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image

from train.bundled_data.digits import digits_splits
from train.retrieval.task import RETRIEVAL_COLUMNS

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
