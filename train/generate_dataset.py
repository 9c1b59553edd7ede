"""Step 1 of the seed: a teacher vision-language model answers a fixed list of questions about every image.

    python -m train.generate_dataset --output_dir data/teacher_vqa          # 55 CIFAR-10 test images, SmolVLM2
    python -m train.generate_dataset --image_dir photos --questions questions.txt --output_dir data/photos_vqa
    python -m train.generate_dataset --backend vllm --batch_size 512 --output_dir data/teacher_vqa   # vLLM engine

Writes to `output_dir`:
    images/                 each source image once, as PNG, under a name fixed per source image
    data.csv                the seed's `image,question,answer` rows (image paths relative to the CSV)
    parquet/train.parquet   the same rows in TRL conversational format, rebuilt from the CSV at the end of a run,
                            for `datasets.load_dataset(output_dir + "/parquet")` and `trl sft --dataset_name ...`
    parquet/test.parquet    with `--test_fraction F`: the rows of a held-out F of the images, split by image
                            (an image's questions all land on one side, so a test image is never seen in training)

The CSV is the only record of progress, so a run can be killed at any moment (SIGKILL included) and restarted
with the same arguments: rows are appended after each batch with flush + fsync, so at most the batch in flight
is lost; on start the CSV is read back, a record torn by a kill mid-write is dropped, the file is rewritten
cleanly (atomically), and the (image, question) pairs already in it are skipped.

Across processes: `accelerate launch --num_processes N -m train.generate_dataset ...` gives process i the images
i, i+N, i+2N, ... of the sorted sources; each writes and resumes its own shard (`train.common.resumable_csv`), and
the main process merges them, so data.csv and the Parquet splits are the same rows in the same order whatever N,
also after a process was killed and the launch run again.

Empty teacher answers are skipped, not retried: decoding is greedy, so asking again gives the same empty answer.
They are counted in a warning and not written, so the pair stays pending and a rerun (e.g. with a larger
`--max_new_tokens` or another `--teacher`) asks again. Unreadable images (corrupt or zero-byte files) in
`--image_dir` are skipped the same way and listed in a warning.
"""

import csv
import hashlib
import itertools
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path

import torch
from accelerate import PartialState
from PIL import Image
from tqdm.auto import tqdm

from train.common.cli import InvalidInput, run_cli
from train.common.resumable_csv import append_rows, finished_pairs, merge_shards, progress_file
from train.common.teachers import TEACHER_BACKENDS
from train.common.vqa_data import open_image, read_pairs_file, write_parquet_splits

SEED_QUESTIONS = (
    "Can you describe this image?",
    "Explain the purpose of image",
    "Can you comment on size and kind of this image",
    "Create a interesting story about this image",
    "Elaborate the setting of the image",
)

PNG_MODES = {"1", "L", "LA", "I;16", "P", "RGB", "RGBA"}  # what Pillow can write as PNG
# (path written in the CSV, loader raising InvalidInput for an unreadable image)
Source = tuple[str, Callable[[], Image.Image]]


@dataclass
class GenerateDatasetArguments:
    output_dir: str = field(metadata={"help": "Folder for images/, data.csv and parquet/ (reused to resume)."})
    teacher: str = field(default="HuggingFaceTB/SmolVLM2-2.2B-Instruct", metadata={
        "help": "Hub id or folder of any AutoModelForImageTextToText model with a chat template."})
    image_dir: str | None = field(default=None, metadata={
        "help": "Folder of images (searched recursively). When given, --dataset_name is not used."})
    dataset_name: str = field(default="uoft-cs/cifar10", metadata={"help": "`datasets` image dataset (id or folder)."})
    dataset_split: str = field(default="test", metadata={"help": "Split of --dataset_name."})
    image_column: str = field(default="img", metadata={"help": "Image column of --dataset_name."})
    num_images: int = field(default=55, metadata={"help": "Use the first N images of --dataset_name."})
    questions: str | None = field(default=None, metadata={
        "help": "A JSON list (inline or a .json file) or a text file with one question per line. "
                "Default: the seed's five questions."})
    batch_size: int = field(default=8, metadata={"help": "(image, question) pairs per generate call."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest answer, in tokens."})
    dtype: str = field(default="auto", metadata={"help": "Teacher weights dtype; auto: bfloat16 on GPU, else float32.",
                                                 "choices": ["auto", "float32", "bfloat16", "float16"]})
    device: str = field(default="auto", metadata={"help": "auto: cuda if available, else cpu."})
    test_fraction: float = field(default=0.0, metadata={
        "help": "Share of the images (not rows) held out as parquet/test.parquet; 0 writes train.parquet only."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow a teacher with custom code (SigPhi)."})
    backend: str = field(default="transformers", metadata={
        "help": "Engine that runs the teacher: transformers `generate`, or vLLM's offline engine (pip install vllm).",
        "choices": list(TEACHER_BACKENDS)})
    temperature: float = field(default=0.0, metadata={"help": "0 is greedy decoding; above 0, sampling."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold (with --temperature > 0)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    gpu_memory_utilization: float = field(default=0.9, metadata={
        "help": "vLLM only: share of the GPU's memory it reserves (of the machine's RAM with vLLM's CPU build)."})


def _json_questions(text: str, source: str) -> list[str]:
    try:
        questions = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"{source}: invalid JSON at line {error.lineno}, column {error.colno}: "
                           f"{error.msg}") from None
    if not isinstance(questions, list):
        raise InvalidInput(f"{source}: expected a JSON list of questions")
    for number, question in enumerate(questions, start=1):
        if not isinstance(question, str) or not question.strip():
            raise InvalidInput(f"{source}, item {number}: expected a non-empty string, got {question!r}")
    return questions


def load_questions(spec: str | None) -> list[str]:
    """The questions, stripped and without repeats (a repeated question would give duplicate rows)."""
    if spec is None:
        return list(SEED_QUESTIONS)
    source = "--questions"
    if spec.lstrip().startswith("["):
        questions = _json_questions(spec, source)
    else:
        path = Path(spec)
        if not path.is_file():
            raise InvalidInput(f"--questions {spec}: no such file (give a file or an inline JSON list)")
        source, text = str(path), path.read_text(encoding="utf-8")
        questions = _json_questions(text, source) if path.suffix == ".json" else text.splitlines()
    questions = list(dict.fromkeys(q.strip() for q in questions if q.strip()))
    if not questions:
        raise InvalidInput(f"{source}: no questions")
    return questions


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:60] or "image"


def folder_images(image_dir: str) -> list[Source]:
    """Every image file under `image_dir`, sorted. The PNG name hashes the relative path, so it stays the same
    across runs and `a.png`, `a.jpg` and `sub/a.png` do not collide."""
    root = Path(image_dir)
    if not root.is_dir():
        raise InvalidInput(f"--image_dir {root}: no such folder")
    extensions = Image.registered_extensions()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    if not files:
        raise InvalidInput(f"--image_dir {root}: no image files in it")
    sources = []
    for path in files:
        digest = hashlib.sha1(path.relative_to(root).as_posix().encode()).hexdigest()[:8]
        sources.append((f"images/{_safe(path.stem)}-{digest}.png", partial(open_image, path, "--image_dir")))
    return sources


def dataset_images(name: str, split: str, column: str, num_images: int) -> list[Source]:
    """The first `num_images` images of a `datasets` dataset, decoded only when their turn comes."""
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    try:
        dataset = load_dataset(name, split=split)
    except (FileNotFoundError, ValueError, ConnectionError) as error:
        raise InvalidInput(f"--dataset_name {name} (split {split}): {str(error).splitlines()[0]}") from None
    if not isinstance(dataset.features.get(column), ImageFeature):
        raise InvalidInput(f"--dataset_name {name}, column '{column}': no image column of that name "
                           f"(columns: {', '.join(dataset.column_names)})")
    dataset = dataset.select(range(min(num_images, len(dataset))))
    prefix = f"images/{_safe(Path(name).name)}-{_safe(split)}"

    def load(index: int) -> Image.Image:
        return dataset[index][column]

    return [(f"{prefix}-{index:05d}.png", partial(load, index)) for index in range(len(dataset))]


def load_teacher(args: GenerateDatasetArguments):
    """The chosen backend's teacher, loaded only once there is something to ask."""
    if not 0.0 < args.top_p <= 1.0 or args.temperature < 0.0:
        raise InvalidInput(f"--temperature {args.temperature} --top_p {args.top_p}: expected temperature >= 0 "
                           "and 0 < top_p <= 1")
    settings = {"temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}
    if args.backend == "vllm":
        settings["memory_fraction"] = args.gpu_memory_utilization
    return TEACHER_BACKENDS[args.backend](args.teacher, args.device, args.dtype, args.trust_remote_code,
                                          args.max_new_tokens, **settings)


def pending_pairs(todo: list[tuple[str, Callable, list[str]]], output_dir: Path, unreadable: list[str],
                  bar: tqdm) -> Iterator[tuple[str, Image.Image, str]]:
    """(CSV image path, image, question) of every unfinished pair, one image in memory at a time.

    Each image is saved before its first row can be written (atomically, so a row never points at a torn PNG).
    """
    for name, load, questions in todo:
        try:
            image = load()
        except InvalidInput as error:
            unreadable.append(str(error))
            bar.update(len(questions))
            continue
        if image.mode not in PNG_MODES:  # e.g. a CMYK JPEG
            image = image.convert("RGB")
        temporary = output_dir / f"{name}.tmp"
        image.save(temporary, format="PNG")
        os.replace(temporary, output_dir / name)
        for question in questions:
            yield name, image, question


def main(args: GenerateDatasetArguments) -> None:
    if not 0.0 <= args.test_fraction < 1.0:  # checked before the teacher runs, not after
        raise InvalidInput(f"--test_fraction {args.test_fraction}: expected a number in [0, 1)")
    questions = load_questions(args.questions)
    sources = (folder_images(args.image_dir) if args.image_dir else
               dataset_images(args.dataset_name, args.dataset_split, args.image_column, args.num_images))
    # One process unless started by `accelerate launch` (without a GPU, accelerate sees the launch only when told
    # `cpu`: its processes then meet over gloo). The main process waits at the end for the slowest one, which after
    # a resumed launch can be hours behind: longer than torch's 30-minute collective timeout.
    processes = PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=48))
    rank, world = processes.process_index, processes.num_processes
    if world > 1 and args.backend == "vllm":
        raise InvalidInput("--backend vllm: run one process; vLLM batches by itself (and spreads over GPUs with its "
                           "own --tensor-parallel-size / --data-parallel-size)")
    if world > 1 and args.device == "auto":
        args.device = str(processes.device)
    output_dir = Path(args.output_dir)
    (output_dir / "images").mkdir(parents=True, exist_ok=True)
    own_file = progress_file(output_dir, rank, world)
    own_file.parent.mkdir(exist_ok=True)
    done = finished_pairs(output_dir, own_file)
    todo = [(name, load, [q for q in questions if (name, q) not in done]) for name, load in sources[rank::world]]
    todo = [item for item in todo if item[2]]
    total = sum(len(item[2]) for item in todo)
    print(f"{own_file}: {len(done)} rows already written, {total} (image, question) pairs to ask", file=sys.stderr)
    unreadable, empty = [], 0
    if todo:
        teacher = load_teacher(args)
        with (open(own_file, "a", newline="", encoding="utf-8") as handle,
              tqdm(total=total, desc="teacher answers", unit="pair", position=rank) as bar):
            pairs = pending_pairs(todo, output_dir, unreadable, bar)
            while batch := list(itertools.islice(pairs, args.batch_size)):
                names, images, batch_questions = zip(*batch)
                answers = teacher.answer(list(images), list(batch_questions))
                rows = [row for row in zip(names, batch_questions, answers) if row[2]]
                empty += len(batch) - len(rows)
                append_rows(handle, rows)
                bar.update(len(batch))
    if unreadable:
        print(f"warning: skipped {len(unreadable)} unreadable image(s): {'; '.join(unreadable)}", file=sys.stderr)
    if empty:
        print(f"warning: {empty} empty teacher answer(s) not written; rerun to ask those pairs again",
              file=sys.stderr)
    processes.wait_for_everyone()
    if processes.is_main_process:
        order = {(name, question): index for index, (name, question) in
                 enumerate((name, question) for name, _ in sources for question in questions)}
        merge_shards(output_dir, order)
        write_splits(output_dir, args.test_fraction)


def write_splits(output_dir: Path, test_fraction: float) -> None:
    """parquet/ from data.csv, rebuilt from scratch, so it always holds exactly the CSV's rows."""
    csv_path = output_dir / "data.csv"
    rows = read_pairs_file(csv_path)
    with open(csv_path, newline="", encoding="utf-8") as handle:
        image_names = [record["image"] for record in csv.DictReader(handle)]
    splits = split_by_image(rows, image_names, test_fraction)
    write_parquet_splits(splits, output_dir / "parquet")
    print(f"wrote {len(rows)} rows to {csv_path} and " + ", ".join(
        f"{len(split_rows)} to {output_dir / 'parquet' / f'{split}.parquet'}" for split, split_rows in splits.items()))


def split_by_image(rows: list[dict], image_names: list[str], test_fraction: float) -> dict[str, list[dict]]:
    """`{"train": rows}`, or train/test with round(test_fraction × images) images held out (at least one).

    Images are ordered by a hash of their name, not drawn at random, so the split depends only on which images
    the CSV holds: a resumed or re-run generation puts every image on the same side again."""
    if test_fraction == 0.0:
        return {"train": rows}
    images = sorted(set(image_names), key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    if len(images) < 2:
        raise InvalidInput(f"--test_fraction {test_fraction}: needs at least 2 images, the data has {len(images)}")
    held_out = set(images[:min(max(1, round(test_fraction * len(images))), len(images) - 1)])
    return {"train": [row for row, name in zip(rows, image_names) if name not in held_out],
            "test": [row for row, name in zip(rows, image_names) if name in held_out]}


if __name__ == "__main__":
    run_cli(main, GenerateDatasetArguments)
