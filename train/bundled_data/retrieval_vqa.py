"""The bundled multiple-choice retrieval VQA task on handwritten digits (`python -m train.make_dataset retrieval_vqa`),
written as seed CSVs.

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

COLOURS = {"red": (230, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 240), "yellow": (240, 220, 40),
           "purple": (160, 60, 210), "orange": (250, 140, 20), "pink": (250, 130, 200), "cyan": (40, 210, 220)}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SYLLABLES = ("ka", "lo", "mi", "ra", "ve", "zu", "to", "sen", "dor", "bel", "qui", "nax", "po", "rin", "tal",
             "mur", "fi", "gon", "sha", "lek", "vo", "dre", "pim", "sal")
N_CHOICES = 4
SPLITS = ("train", "val", "test")
MULTIPLE_CHOICE_COLUMNS = ("question_text", "question_image", "answer_choices", "label")


def catalogue_question(catalogue: str) -> str:
    return f"In the {catalogue} catalogue, what colour is this digit?"


def catalogue_passage(catalogue: str, facts: list[tuple[int, str]]) -> str:
    """"In the Kalomi catalogue, the digit seven is red." and, for a passage of several facts, "The digit two is
    blue." after it."""
    first, *rest = [f"the digit {DIGIT_WORDS[digit]} is {colour}." for digit, colour in facts]
    return " ".join([f"In the {catalogue} catalogue, {first}", *(fact.capitalize() for fact in rest)])


def catalogue_fact(catalogue: str, digit: int, colour: str) -> str:
    return catalogue_passage(catalogue, [(digit, colour)])


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


def multiple_choice(rng: random.Random, answer: str, values) -> tuple[list[str], int]:
    """`N_CHOICES` choices drawn from `values`, the answer among them at a random place."""
    choices = rng.sample([value for value in values if value != answer], N_CHOICES - 1) + [answer]
    rng.shuffle(choices)
    return choices, choices.index(answer)


def write_rows(path: Path, rows: list[dict], columns) -> None:
    """A seed CSV with `columns`; list and dict cells are written as JSON."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([json.dumps(row[c]) if isinstance(row[c], (list, dict)) else row[c] for c in columns])


def write_jsonl(path: Path, documents: list) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(document) + "\n" for document in documents)


def by_digit(drawings: list[tuple[int, Image.Image, str]]) -> dict[int, list[tuple[int, Image.Image, str]]]:
    """`digits_splits` items grouped by their digit, in their order."""
    groups = {}
    for drawing in drawings:
        groups.setdefault(int(drawing[2]), []).append(drawing)
    return groups


def passage_sizes(rng: random.Random, n_facts: int, passages: bool) -> list[int]:
    """How many facts each passage of a catalogue holds: one each, or two to four (summing to `n_facts`)."""
    if not passages:
        return [1] * n_facts
    sizes = []
    while sum(sizes) < n_facts:
        left = n_facts - sum(sizes)
        sizes.append(left if left <= 4 else rng.choice([s for s in (2, 3, 4) if left - s != 1]))
    return sizes


def write_retrieval_vqa(output_dir: str | os.PathLike, n_train_catalogues: int = 150, n_val_catalogues: int = 5,
                        n_test_catalogues: int = 10, n_train_archive: int = 300, n_val_archive: int = 50,
                        n_test_archive: int = 100, n_distractor_catalogues: int = 20,
                        n_distractor_drawings: int = 100, passages: bool = False, seed: int = 0) -> dict[str, int]:
    """Write `train.csv`, `val.csv`, `test.csv`, `corpus.jsonl` and `images/` of the bundled retrieval task.

    Two kinds of question, both answered only by a randomly drawn colour (so without documents a model is at
    chance), both needing the image *and* the text to find the document among distractors:

    - catalogue: "In the Kalomi catalogue, what colour is this digit?" with a handwritten digit. The gold
      text document "In the Kalomi catalogue, the digit seven is red." sits among the same catalogue's other
      digits (text alone is not enough) and other catalogues' sevens (the image alone is not enough). With
      `passages`, each catalogue's ten facts are written as passages of two to four sentences ("... the digit seven is
      red. The digit two is blue."), so the passage that answers also names other colours, wrong choices among them.
    - archive: "In the sample archive, what colour is this drawing?" The gold *image* document is that very
      drawing painted in its colour, among other painted drawings of the same digit and the catalogue facts
      about it.

    Train, validation and test use disjoint catalogues and disjoint drawings (validation and test drawings are
    `load_digits`'s test split, indices divisible by 5, which the tiny preset's stand-ins never see), so validation
    and test facts and pictures were never seen in training; catalogue questions show drawings no archive picture
    shows. `corpus.jsonl` adds distractors from a further set of catalogues and drawings. Also written:
    `train_answers_only.csv` (the training questions without the `documents` column) with `train_documents.jsonl`
    (their documents and the distractors, the corpus to retrieve from when training from the answers alone), and
    `test_swapped.csv` (the test questions with every fact's colour drawn anew: same images and catalogues, different
    answers). Returns the number of rows per file.
    """
    rng = random.Random(seed)
    output_dir = Path(output_dir)
    (output_dir / "images").mkdir(parents=True, exist_ok=True)
    digits = digits_splits()
    train_pool, test_pool = (rng.sample(digits[split], len(digits[split])) for split in ("train", "test"))
    counts = {"train": n_train_catalogues, "val": n_val_catalogues, "test": n_test_catalogues}
    names = catalogue_names(rng, sum(counts.values()) + n_distractor_catalogues)
    catalogues, start = {}, 0
    for split in SPLITS:
        catalogues[split], start = names[start:start + counts[split]], start + counts[split]
    distractor_catalogues = names[start:]
    # Drawings: the training pool shows training questions and distractors; load_digits' test split, which no
    # stand-in pretrains on, shows validation and test questions (a third of each digit's drawings to validation), so
    # that validation measures what test does: questions about drawings never seen.
    archive = {"train": train_pool[:n_train_archive], "val": test_pool[n_test_archive:n_test_archive + n_val_archive],
               "test": test_pool[:n_test_archive]}
    distractor_drawings = train_pool[n_train_archive:n_train_archive + n_distractor_drawings]
    held_out = by_digit(test_pool[n_test_archive + n_val_archive:])
    unpainted = {"train": by_digit(train_pool[n_train_archive + n_distractor_drawings:]),
                 "val": {digit: drawings[::3] for digit, drawings in held_out.items()},
                 "test": {digit: [d for i, d in enumerate(drawings) if i % 3] for digit, drawings in held_out.items()}}
    for split, drawings in unpainted.items():
        if any(not drawings.get(digit) for digit in range(10)):
            raise ValueError(f"too few drawings left for the {split} split's catalogue questions: lower the archive "
                             "and distractor counts")

    def save(image: Image.Image, name: str) -> str:
        image.save(output_dir / "images" / name)
        return f"images/{name}"

    def catalogue_documents(catalogue: str) -> dict[int, tuple[str, list[tuple[int, str]]]]:
        """digit -> (the passage holding its fact, that passage's facts)."""
        digits_order = rng.sample(range(10), 10)
        found, start = {}, 0
        for size in passage_sizes(rng, 10, passages):
            facts = [(digit, rng.choice(list(COLOURS))) for digit in digits_order[start:start + size]]
            start += size
            found.update({digit: (catalogue_passage(catalogue, facts), facts) for digit, _ in facts})
        return found

    sizes, written = {}, {}
    for split in SPLITS:
        rows = []
        for catalogue in catalogues[split]:
            documents = catalogue_documents(catalogue)
            for digit in range(10):
                passage, facts = documents[digit]
                colour = dict(facts)[digit]
                index, image, _ = rng.choice(unpainted[split][digit])
                choices, label = multiple_choice(rng, colour, COLOURS)
                rows.append({"question_text": catalogue_question(catalogue),
                             "question_image": save(image, f"{index:04d}.png"), "answer_choices": choices,
                             "label": label, "documents": [passage], "source": (catalogue, digit, facts)})
        for index, image, _ in archive[split]:
            colour = rng.choice(list(COLOURS))
            choices, label = multiple_choice(rng, colour, COLOURS)
            rows.append({"question_text": ARCHIVE_QUESTION, "question_image": save(image, f"{index:04d}.png"),
                         "answer_choices": choices, "label": label,
                         "documents": [{"image": save(painted(image, colour), f"{index:04d}_{colour}.png")}],
                         "source": (index, image, colour)})
        rng.shuffle(rows)
        write_rows(output_dir / f"{split}.csv", rows, (*MULTIPLE_CHOICE_COLUMNS, "documents"))
        written[split], sizes[split] = rows, len(rows)

    distractors = list(dict.fromkeys(passage for catalogue in distractor_catalogues
                                     for passage, _ in catalogue_documents(catalogue).values()))
    for index, image, _ in distractor_drawings:
        colour = rng.choice(list(COLOURS))
        distractors.append({"image": save(painted(image, colour), f"{index:04d}_{colour}.png")})
    write_jsonl(output_dir / "corpus.jsonl", distractors)
    sizes["corpus"] = len(distractors)

    # Answers only: the training questions without their documents column; the documents go to the corpus file.
    write_rows(output_dir / "train_answers_only.csv", written["train"], MULTIPLE_CHOICE_COLUMNS)
    train_documents = list({json.dumps(doc): doc for row in written["train"] for doc in row["documents"]}.values())
    write_jsonl(output_dir / "train_documents.jsonl", train_documents + distractors)

    # Facts swapped: the same test questions (same images, same catalogues), every fact's colour drawn anew.
    swap_rng = random.Random(seed + 1)  # its own generator: the files above stay what they were
    swapped = []
    for row in written["test"]:
        key, detail, old = row["source"]
        if isinstance(key, str):  # a catalogue question: its passage with this digit's colour drawn anew
            colour = swap_rng.choice([c for c in COLOURS if c != dict(old)[detail]])
            document = catalogue_passage(key, [(d, colour if d == detail else c) for d, c in old])
        else:  # an archive drawing, painted anew
            colour = swap_rng.choice([c for c in COLOURS if c != old])
            document = {"image": save(painted(detail, colour), f"{key:04d}_{colour}.png")}
        choices, label = multiple_choice(swap_rng, colour, COLOURS)
        swapped.append({**row, "answer_choices": choices, "label": label, "documents": [document]})
    write_rows(output_dir / "test_swapped.csv", swapped, (*MULTIPLE_CHOICE_COLUMNS, "documents"))
    sizes["test_swapped"] = len(swapped)
    return sizes
