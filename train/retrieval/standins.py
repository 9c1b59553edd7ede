"""Stand-ins for pretrained checkpoints, used only by the tiny preset (`--preset tiny`), whose parts start from random
weights.

A real retriever-generator starts from SigLIP, whose image tower already matches two pictures of one thing, and from
a vision-language model built on Phi-3 and SigLIP, which already reads passages of several facts, names the colours
and digits it sees, and answers from its context. The tiny preset gives its parts those skills briefly, on data
that is not the task's questions, before the recipe's three stages run exactly as they would on real checkpoints:

- the retriever's image tower learns to match pictures (`train.retrieval.image_tower_standin`);
- the generator's vision tower learns the digits, then the generator learns to read (`standin_generator`, trained on
  `reading_rows`, kept on disk like a downloaded checkpoint): synthetic passages of two to four
  facts about made-up names with a question about one of them, pictures of shapes whose colour it names (as the
  question's picture or as a document), and the handwritten digits of scikit-learn's training split (never a test
  question's drawing) whose digit it names.
"""

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from PIL import Image, ImageDraw
from transformers import TrainingArguments

from processing import RetrieverGeneratorProcessor
from train.bundled_data.digits import DIGIT_QUESTION, digits_splits
from train.common.vqa_data import conversation_row
from train.retrieval.generator_stage import train_generator
from train.sigphi.loading import load_sigphi
from train.sigphi.standins import pretrain_vision_tower
from train.sigphi.tiny import build_tiny_sigphi

# Where stand-in checkpoints are kept between runs, as downloaded ones are (SIGPHI_STANDIN_CACHE moves it).
STANDIN_CACHE = Path(os.environ.get("SIGPHI_STANDIN_CACHE", Path.home() / ".cache" / "sigphi" / "standins"))
# Torch splits a sum over its threads, so trained weights depend on their number (ten reading epochs on one thread end
# up to 0.66 away from the same on two). The stand-in is always built on this many, so that, like a download, it is
# the same wherever it is built (with this torch build and kind of CPU), whatever the caller's threads.
STANDIN_TORCH_THREADS = 2

COLOURS = {"red": (230, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 240), "yellow": (240, 220, 40),
           "purple": (160, 60, 210), "orange": (250, 140, 20), "pink": (250, 130, 200), "cyan": (40, 210, 220),
           "brown": (140, 80, 30), "white": (245, 245, 245), "grey": (128, 128, 128), "black": (10, 10, 10)}
NUMBER_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
THINGS = ("kettle", "boat", "lamp", "kite", "door", "hat")
# kind -> (fact templates, question template, values) of the reading stand-in: {name} is a made-up name, {value} the
# answer, {thing} one of THINGS.
FACTS = {
    "colour": (["{name}'s {thing} is {value}.", "The {thing} of {name} is {value}."],
               "What colour is {name}'s {thing}?", list(COLOURS)),
    "food": (["{name} eats {value}.", "{name} feeds on {value}."], "What does {name} eat?",
             ["berries", "fish", "seeds", "grass", "nuts", "honey", "insects", "leaves", "roots", "worms", "mice"]),
    "home": (["{name} lives in {value}.", "{name} makes its home in {value}."], "Where does {name} live?",
             ["caves", "trees", "rivers", "lakes", "deserts", "marshes", "hills", "meadows", "forests", "burrows"]),
    "count": (["{name} has {value} legs.", "{name} walks on {value} legs."], "How many legs does {name} have?",
              list(NUMBER_WORDS)),
}
CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.choice((2, 3)))).capitalize()


def passage_row(rng: random.Random) -> tuple[str, str, str]:
    """(passage, question, answer): two to four facts about different made-up names, a question about one of them."""
    names = list(dict.fromkeys(_name(rng) for _ in range(4)))[:rng.choice((2, 3, 4))]
    facts = []
    for name in names:
        templates, question, values = FACTS[rng.choice(list(FACTS))]
        slots = {"name": name, "value": rng.choice(values), "thing": rng.choice(THINGS)}
        facts.append((rng.choice(templates).format(**slots), question.format(**slots), slots["value"]))
    _, question, answer = rng.choice(facts)
    return " ".join(fact for fact, _, _ in facts), question, answer


SHAPES = ("circle", "square", "triangle", "cross")


def shape_picture(rng: random.Random, colour: str, shape: str | None = None, size: int = 32) -> Image.Image:
    """A `shape` (random if None) in `colour`, of random size and place, on a dark background (a light one for
    black)."""
    background = (225, 225, 225) if colour == "black" else rng.choice([(0, 0, 0), (30, 30, 30), (60, 40, 30)])
    image = Image.new("RGB", (size, size), background)
    side = rng.randint(size // 2, size - 2)
    x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
    x1, y1 = x0 + side, y0 + side
    draw, fill = ImageDraw.Draw(image), COLOURS[colour]
    shape = shape or rng.choice(SHAPES)
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=fill)
    else:
        third = side // 3
        draw.rectangle((x0 + third, y0, x1 - third, y1), fill=fill)
        draw.rectangle((x0, y0 + third, x1, y1 - third), fill=fill)
    return image


def reading_rows(n_passages: int = 3000, n_colours: int = 800, n_digits: int = 800, seed: int = 0,
                 document_template: str = "Document: {document}\n") -> list[dict]:
    """TRL conversational rows of the reading stand-in, in the retriever-generator's prompt layout."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n_passages):
        passage, question, answer = passage_row(rng)
        rows.append(RetrieverGeneratorProcessor.conversation(question, None, [{"text": passage}], document_template,
                                                             answer=answer))
    for number in range(n_colours):  # half of them read the picture as a document
        colour = rng.choice(list(COLOURS))
        picture = shape_picture(rng, colour)
        rows.append(RetrieverGeneratorProcessor.conversation(
            "What colour is this picture?", picture, [], document_template, answer=colour) if number % 2 else
            RetrieverGeneratorProcessor.conversation("What colour is the picture in the document?", None,
                                                     [{"image": picture}], document_template, answer=colour))
    digits = digits_splits()["train"]
    for _, image, answer in rng.sample(digits, min(n_digits, len(digits))):
        rows.append(RetrieverGeneratorProcessor.conversation("What digit is this?", image, [], document_template,
                                                             answer=DIGIT_WORDS[int(answer)]))
    rng.shuffle(rows)
    return [{"messages": messages, "images": images} for messages, images in rows]


def standin_generator(seed: int = 0, reader_epochs: float = 10, vision_epochs: int = 30,
                      document_template: str = "Document: {document}\n", cache: bool = True):
    """The tiny preset's generator: a random tiny SigPhi whose vision tower first learns the digits (the classifier
    stand-in the quickstart gives SigPhi, `train.sigphi.standins.pretrain_vision_tower`), then reads (`reading_rows`,
    every weight trained). Returns (model, processor).

    Like a downloaded checkpoint it is made once: the result is kept under `STANDIN_CACHE`, keyed by these settings,
    the code that makes it and the library versions, and read from there by later runs (`cache=False`: always
    rebuilt, nothing written).
    """
    settings = {"seed": seed, "reader_epochs": reader_epochs, "vision_epochs": vision_epochs,
                "document_template": document_template, "code": _source_digest(), "versions": _versions()}
    folder = STANDIN_CACHE / f"generator-{hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]}"
    if cache and (folder / "config.json").is_file():
        print(f"stand-in generator: read from {folder}", flush=True)
        return load_sigphi(str(folder))
    callers_threads = torch.get_num_threads()
    torch.set_num_threads(STANDIN_TORCH_THREADS)
    try:
        generator, processor = _train_standin(seed, reader_epochs, vision_epochs, document_template)
    finally:
        torch.set_num_threads(callers_threads)
    if cache:
        STANDIN_CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=STANDIN_CACHE, prefix=".building-"))  # renamed when complete
        generator.save_pretrained(staging)
        processor.save_pretrained(staging)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        print(f"stand-in generator: kept in {folder}", flush=True)
    return generator.eval(), processor


def _train_standin(seed: int, reader_epochs: float, vision_epochs: int, document_template: str):
    generator, processor = build_tiny_sigphi(seed)
    with tempfile.TemporaryDirectory() as work:
        if vision_epochs:
            digits = Dataset.from_list([conversation_row(image, DIGIT_QUESTION, answer)
                                        for _, image, answer in digits_splits()["train"]])
            pretrain_vision_tower(generator, processor, digits, TrainingArguments(
                work, num_train_epochs=vision_epochs, per_device_train_batch_size=32, learning_rate=3e-3,
                lr_scheduler_type="cosine", warmup_steps=10, save_strategy="no", report_to="none", seed=seed,
                dataloader_pin_memory=False))
        if reader_epochs:
            generator = train_generator(generator, processor, reading_rows(seed=seed,
                                                                           document_template=document_template),
                                        work, epochs=reader_epochs, batch_size=32, learning_rate=2e-3, seed=seed,
                                        name="generator-standin")
    return generator, processor


def _source_digest() -> str:
    """A digest of the code that builds and trains the stand-in generator."""
    from train.common import tokenizer
    from train.sigphi import standins as sigphi_standins
    from train.sigphi import tiny

    paths = [Path(__file__), *(Path(module.__file__) for module in (tokenizer, sigphi_standins, tiny))]
    return hashlib.sha256(b"".join(path.read_bytes() for path in paths)).hexdigest()


def _versions() -> dict:
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}
