"""The bundled encyclopedia task (`python -m train.make_dataset encyclopedia`), written as seed CSVs: a second
retrieval VQA task, built differently from `retrieval_vqa` to test the method on data it was not shaped on.

Made-up creatures, each with a picture and an article of several facts. A question shows *another view* of a creature
(shifted, turned, zoomed, mirrored, in other light) and asks about one of its facts: "What does this creature eat?".
Its document is the creature's picture with its article, one image+text document; the article also names a rival
creature's facts, so it names wrong candidates too, and articles run longer than the tiny text tower's 64 tokens
(chunked). Answers are open-ended, with aliases, VQA style ("berries", "berry"; "four", "4"), and four choices too.
See `write_encyclopedia`.
"""

import os
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance

from train.bundled_data.retrieval_vqa import (MULTIPLE_CHOICE_COLUMNS, SPLITS, catalogue_names, multiple_choice,
                                              write_jsonl, write_rows)

PICTURE_SIZE = 32
PALETTE = {"red": (220, 50, 50), "green": (50, 170, 70), "blue": (60, 100, 230), "yellow": (235, 210, 50),
           "purple": (150, 70, 200), "orange": (240, 140, 30), "pink": (240, 140, 200), "cyan": (50, 200, 210),
           "white": (240, 240, 240), "black": (20, 20, 20)}
BACKGROUNDS = [(90, 60, 40), (40, 70, 40), (40, 50, 90), (110, 110, 110), (200, 190, 150), (20, 20, 30)]
BODIES, MARKINGS = ("ellipse", "box", "triangle", "diamond"), ("stripes", "dots", "ring", "cross", "none")
# attribute -> (question, {answer: aliases}, what the article says of a creature with that answer)
ATTRIBUTES = {
    "food": ("What does this creature eat?",
             {"berries": ["berry"], "fish": ["fishes"], "seeds": ["seed"], "insects": ["bugs"], "grass": [],
              "nuts": ["nut"], "honey": [], "mice": ["mouse"]}, "eats {value}"),
    "home": ("Where does this creature live?",
             {"caves": ["cave"], "trees": ["tree"], "rivers": ["river"], "marshes": ["marsh", "swamps"],
              "deserts": ["desert"], "mountains": ["mountain"], "meadows": ["meadow"], "burrows": ["burrow"]},
             "lives in {value}"),
    "legs": ("How many legs does this creature have?",
             {"two": ["2"], "four": ["4"], "six": ["6"], "eight": ["8"], "ten": ["10"], "twelve": ["12"]},
             "has {value} legs"),
    "eggs": ("What colour are this creature's eggs?",
             {"blue": [], "grey": ["gray"], "white": [], "green": [], "brown": [], "red": [], "yellow": [],
              "pink": []}, "lays {value} eggs"),
}
OPENINGS = ("The {name} is a creature of the {region}.", "The {name} is a shy animal found in the {region}.",
            "Travellers to the {region} often meet the {name}.")
REGIONS = ("north", "south", "eastern plains", "western isles", "high valleys", "old forests", "salt flats")


def creature_look(rng: random.Random) -> dict:
    """What a creature looks like in every picture of it."""
    body, marking = rng.sample(list(PALETTE), 2)
    return {"background": rng.choice(BACKGROUNDS), "body": rng.choice(BODIES), "marking": rng.choice(MARKINGS),
            "body_colour": PALETTE[body], "marking_colour": PALETTE[marking], "width": rng.uniform(0.55, 0.85),
            "height": rng.uniform(0.45, 0.8)}


def creature_picture(look: dict, rng: random.Random | None = None) -> Image.Image:
    """The creature drawn centred (its article's picture), or, given `rng`, another view of it: shifted, turned,
    zoomed, perhaps mirrored, in other light."""
    scale = 4  # drawn large, then shrunk: smooth edges
    size = PICTURE_SIZE * scale
    image = Image.new("RGB", (size, size), look["background"])
    draw = ImageDraw.Draw(image)
    w, h = look["width"] * size / 2, look["height"] * size / 2
    c = size / 2
    box = (c - w, c - h, c + w, c + h)
    shape = {"ellipse": lambda: draw.ellipse(box, fill=look["body_colour"]),
             "box": lambda: draw.rectangle(box, fill=look["body_colour"]),
             "triangle": lambda: draw.polygon([(c - w, c + h), (c + w, c + h), (c, c - h)], fill=look["body_colour"]),
             "diamond": lambda: draw.polygon([(c, c - h), (c + w, c), (c, c + h), (c - w, c)],
                                             fill=look["body_colour"])}
    shape[look["body"]]()
    mark, step = look["marking_colour"], max(1, int(w / 2))
    if look["marking"] == "stripes":
        for x in range(int(c - w), int(c + w), step):
            draw.rectangle((x, c - h / 3, x + step / 3, c + h / 3), fill=mark)
    elif look["marking"] == "dots":
        for dx in (-w / 2, 0, w / 2):
            draw.ellipse((c + dx - w / 8, c - w / 8, c + dx + w / 8, c + w / 8), fill=mark)
    elif look["marking"] == "ring":
        draw.ellipse((c - w / 2, c - h / 2, c + w / 2, c + h / 2), outline=mark, width=max(2, scale * 2))
    elif look["marking"] == "cross":
        draw.rectangle((c - w / 8, c - h / 1.5, c + w / 8, c + h / 1.5), fill=mark)
        draw.rectangle((c - w / 1.5, c - h / 8, c + w / 1.5, c + h / 8), fill=mark)
    if rng is not None:
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        zoom = rng.uniform(0.7, 1.0)
        image = image.rotate(rng.uniform(-25, 25), resample=Image.Resampling.BILINEAR, fillcolor=look["background"])
        shrunk = image.resize((int(size * zoom), int(size * zoom)), Image.Resampling.BILINEAR)
        image = Image.new("RGB", (size, size), look["background"])
        slack = size - shrunk.width
        image.paste(shrunk, (rng.randint(0, slack), rng.randint(0, slack)))
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
    return image.resize((PICTURE_SIZE, PICTURE_SIZE), Image.Resampling.LANCZOS)


def article(rng: random.Random, name: str, facts: dict[str, str], rival: str, rival_facts: dict[str, str]) -> str:
    """An opening, the creature's facts in a random order, and two of a rival's facts (wrong candidates) among them."""
    said = {kind: ATTRIBUTES[kind][2].format(value=value) for kind, value in facts.items()}
    sentences = [f"The {name} {predicate}." for predicate in said.values()]
    rng.shuffle(sentences)
    first, second = (ATTRIBUTES[kind][2].format(value=rival_facts[kind]) for kind in rng.sample(list(rival_facts), 2))
    rival_sentence = rng.choice((f"Its rival, the {rival}, {first} and {second}.",
                                 f"Nearby lives the {rival}, which {first} and {second}."))
    sentences.insert(rng.randint(1, len(sentences)), rival_sentence)
    return " ".join([rng.choice(OPENINGS).format(name=name, region=rng.choice(REGIONS)), *sentences])


def reference_answers(answer: str, aliases: list[str]) -> list[str]:
    """Ten annotators' answers, VQA style: each alias three times and the answer the rest, so that any acceptable form
    scores a VQA accuracy of 1."""
    return ([answer] * (10 - 3 * len(aliases)) + [alias for alias in aliases for _ in range(3)])[:10]


def write_encyclopedia(output_dir: str | os.PathLike, n_train: int = 300, n_val: int = 50, n_test: int = 100,
                       n_distractors: int = 100, questions_per_creature: int = 2, seed: int = 0) -> dict[str, int]:
    """Write `train.csv`, `val.csv`, `test.csv`, `corpus.jsonl` and `images/` of the encyclopedia task.

    Creatures are split between train, validation, test and distractors (whose articles are only in the corpus), so
    validation and test ask about creatures never seen in training; facts are drawn uniformly, so without its article
    a model is at chance. Each creature gets `questions_per_creature` questions about different facts, each with a
    new view of it. Columns: `answer_choices` + `label` and `answers` (reference answers with aliases) and
    `documents` (the creature's picture with its article). Also written, as for `retrieval_vqa`:
    `train_answers_only.csv` and `train_documents.jsonl`. Returns the number of rows per file.
    """
    rng = random.Random(seed)
    output_dir = Path(output_dir)
    (output_dir / "images").mkdir(parents=True, exist_ok=True)
    counts = {"train": n_train, "val": n_val, "test": n_test, "distractors": n_distractors}
    names = catalogue_names(rng, sum(counts.values()))
    creatures = [{"name": name, "look": creature_look(rng),
                  "facts": {kind: rng.choice(list(values)) for kind, (_, values, _) in ATTRIBUTES.items()}}
                 for name in names]
    for number, creature in enumerate(creatures):
        rival = rng.choice(creatures[:number] + creatures[number + 1:])
        creature["picture"] = f"images/creature_{number:04d}.png"
        creature_picture(creature["look"]).save(output_dir / creature["picture"])
        creature["document"] = {"image": creature["picture"],
                                "text": article(rng, creature["name"], creature["facts"], rival["name"],
                                                rival["facts"])}
    groups, start = {}, 0
    for group, count in counts.items():
        groups[group], start = creatures[start:start + count], start + count

    sizes, columns = {}, (*MULTIPLE_CHOICE_COLUMNS, "answers", "documents")
    for split in SPLITS:
        rows = []
        for creature in groups[split]:
            for kind in rng.sample(list(ATTRIBUTES), questions_per_creature):
                question, values, _ = ATTRIBUTES[kind]
                answer = creature["facts"][kind]
                view = f"images/{split}_{len(rows):04d}.png"
                creature_picture(creature["look"], rng).save(output_dir / view)
                choices, label = multiple_choice(rng, answer, values)
                rows.append({"question_text": question, "question_image": view, "answer_choices": choices,
                             "label": label, "answers": reference_answers(answer, values[answer]),
                             "documents": [creature["document"]]})
        rng.shuffle(rows)
        write_rows(output_dir / f"{split}.csv", rows, columns)
        sizes[split] = len(rows)
        if split == "train":
            write_rows(output_dir / "train_answers_only.csv", rows, columns[:-1])
    distractors = [creature["document"] for creature in groups["distractors"]]
    write_jsonl(output_dir / "corpus.jsonl", distractors)
    write_jsonl(output_dir / "train_documents.jsonl", [c["document"] for c in groups["train"]] + distractors)
    sizes["corpus"] = len(distractors)
    return sizes
