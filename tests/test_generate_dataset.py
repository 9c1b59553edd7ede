"""Teacher-generated VQA data (`train.generate_dataset`), with a tiny random SmolVLM-architecture teacher.

The teacher is a random-weight `Idefics3ForConditionalGeneration` (SmolVLM2's architecture) with an
`Idefics3Processor` around a byte-level tokenizer built locally, saved to a folder and passed as `--teacher`,
so the real loading path (`AutoModelForImageTextToText` + `AutoProcessor` + the chat template) runs offline.
"""

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

from train.bundled_data.digits import digit_image
from train.common.cli import run_cli
from train.common.tokenizer import build_byte_level_tokenizer
from train.common.vqa_data import row_question_answer
from train.generate_dataset import GenerateDatasetArguments, main

ROOT = Path(__file__).resolve().parents[1]
SEED_QUESTIONS = [  # the seed's questions, verbatim: the default
    "Can you describe this image?",
    "Explain the purpose of image",
    "Can you comment on size and kind of this image",
    "Create a interesting story about this image",
    "Elaborate the setting of the image",
]
QUESTIONS = ["What is in this picture?", "Can you describe this image?"]
CHAT_TEMPLATE = (  # SmolVLM's turn layout, reduced
    "{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")


def build_teacher(path: Path, silent: bool = False) -> Path:
    """A random tiny SmolVLM-style teacher: 32×32 images, 16-pixel patches, scale factor 2 → one image token.

    `silent`: an LM head of zeros, so every answer is the pad token, which decodes to an empty string.
    """
    tokenizer = build_byte_level_tokenizer(image_token=None)
    tokenizer.add_tokens(["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"],
                         special_tokens=True)
    image_processor = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": 32},
                                             max_image_size={"longest_edge": 32})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=1,
                                  chat_template=CHAT_TEMPLATE)
    config = Idefics3Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 16},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
                     "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "bos_token_id": tokenizer.eos_token_id},
        scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config)
    if silent:
        torch.nn.init.zeros_(model.lm_head.weight)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny teacher's many small ops run ~10× slower on two threads when other work shares the two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return build_teacher(tmp_path_factory.mktemp("teacher"))


def write_digits(folder: Path, count: int, start: int = 0) -> list[Path]:
    """`count` scikit-learn digits as 8×8 greyscale PNGs."""
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True, exist_ok=True)
    pixels = load_digits().images
    paths = [folder / f"digit_{i:03d}.png" for i in range(start, start + count)]
    for index, path in zip(range(start, start + count), paths):
        digit_image(pixels[index]).save(path)
    return paths


def generate(*args: str) -> None:
    """The CLI in this process (faster than a subprocess; `test_cli_process_*` covers the real entry point)."""
    run_cli(main, GenerateDatasetArguments, argv=[str(a) for a in args])


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    return header, rows


def keys(rows: list[list[str]]) -> list[tuple[str, str]]:
    return [(image, question) for image, question, _ in rows]


def test_end_to_end_csv_images_and_parquet(teacher, tmp_path):
    from datasets import load_dataset

    sources = write_digits(tmp_path / "in", 3)
    out = tmp_path / "out"
    generate("--teacher", teacher, "--image_dir", tmp_path / "in", "--output_dir", out,
             "--batch_size", 4, "--max_new_tokens", 8)

    header, rows = read_csv(out / "data.csv")
    assert header == ["image", "question", "answer"]
    assert len(rows) == 3 * 5 and len(set(keys(rows))) == 15
    assert {question for _, question, _ in rows} == set(SEED_QUESTIONS)
    assert all(answer and answer == answer.strip() for _, _, answer in rows)
    assert not any("Assistant:" in answer or question in answer for _, question, answer in rows)  # new tokens only
    images = sorted({image for image, _, _ in rows})
    assert len(images) == 3 and sorted(p.name for p in (out / "images").iterdir()) == [Path(i).name for i in images]
    saved = {tuple(np.asarray(Image.open(out / image)).ravel()) for image in images}
    assert saved == {tuple(np.asarray(Image.open(p)).ravel()) for p in sources}  # each source saved once, unchanged

    dataset = load_dataset(str(out / "parquet"))
    assert list(dataset) == ["train"] and {"messages", "images"} <= set(dataset["train"].column_names)
    assert [row_question_answer(row) for row in dataset["train"]] == [(q, a) for _, q, a in rows]
    assert all(len(row["images"]) == 1 and row["images"][0].size == (8, 8) for row in dataset["train"])

    before = (out / "data.csv").read_bytes()  # a finished run restarted asks nothing and changes nothing
    generate("--teacher", tmp_path / "no-teacher-needed", "--image_dir", tmp_path / "in", "--output_dir", out)
    assert (out / "data.csv").read_bytes() == before


def test_test_fraction_holds_out_whole_images(teacher, tmp_path):
    from datasets import load_dataset

    write_digits(tmp_path / "in", 5)
    out = tmp_path / "out"
    generate("--teacher", teacher, "--image_dir", tmp_path / "in", "--output_dir", out, "--max_new_tokens", 4,
             "--test_fraction", 0.4)
    dataset = load_dataset(str(out / "parquet"))

    def images_of(split: str) -> set[bytes]:  # an image is identified by its pixels, as the Parquet rows hold no path
        return {np.asarray(row["images"][0]).tobytes() for row in dataset[split]}

    # round(0.4 × 5) = 2 images held out, with their 5 questions each
    assert len(dataset["test"]) == 2 * 5 and len(dataset["train"]) == 3 * 5
    assert len(images_of("test")) == 2 and len(images_of("train")) == 3
    assert not images_of("test") & images_of("train")
    first_split = {split: [row_question_answer(row) for row in dataset[split]] for split in ("train", "test")}
    generate("--teacher", tmp_path / "no-teacher-needed", "--image_dir", tmp_path / "in", "--output_dir", out,
             "--test_fraction", 0.4)  # a rerun rebuilds the same split from the CSV
    again = load_dataset(str(out / "parquet"))
    assert {split: [row_question_answer(row) for row in again[split]] for split in ("train", "test")} == first_split


def test_test_fraction_out_of_range_is_refused_before_the_teacher_runs(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        generate("--teacher", tmp_path / "no-teacher", "--image_dir", tmp_path, "--output_dir", tmp_path / "o",
                 "--test_fraction", 1.0)
    assert exit_info.value.code == 2


def test_batched_answers_equal_one_at_a_time(teacher, tmp_path):
    """Left padding: a prompt's answer must not depend on the other prompts in its batch."""
    write_digits(tmp_path / "in", 3)
    questions = json.dumps(QUESTIONS + ["Explain the purpose of image"])
    answers = {}
    for batch_size in (1, 5):
        out = tmp_path / f"out{batch_size}"
        generate("--teacher", teacher, "--image_dir", tmp_path / "in", "--output_dir", out, "--questions", questions,
                 "--batch_size", batch_size, "--max_new_tokens", 12)
        answers[batch_size] = dict(((image, q), a) for image, q, a in read_csv(out / "data.csv")[1])
    assert answers[1] == answers[5] and len(answers[1]) == 9


def test_sampling_is_seeded_and_greedy_is_the_default(teacher, tmp_path):
    """`--temperature` samples (the same rows again for the same `--seed`); without it decoding is greedy."""
    write_digits(tmp_path / "in", 2)
    rows = {}
    for name, flags in {"greedy": (), "sampled": ("--temperature", 1.5), "again": ("--temperature", 1.5)}.items():
        generate("--teacher", teacher, "--image_dir", tmp_path / "in", "--output_dir", tmp_path / name,
                 "--max_new_tokens", 12, *flags)
        rows[name] = read_csv(tmp_path / name / "data.csv")[1]
    assert rows["sampled"] == rows["again"] and rows["sampled"] != rows["greedy"]


def test_dataset_source_and_question_files(teacher, tmp_path):
    from datasets import Dataset
    from datasets import Image as ImageFeature

    images = [digit_image(np.full((8, 8), value)) for value in (0, 5, 10, 16)]
    Dataset.from_dict({"img": images, "label": [0, 1, 2, 3]}).cast_column("img", ImageFeature()).to_parquet(
        str(tmp_path / "mydata" / "test.parquet"))
    (tmp_path / "questions.txt").write_text("\nWhat is in this picture?\n  Can you describe this image?  \n\n")
    out = tmp_path / "out"
    generate("--teacher", teacher, "--dataset_name", tmp_path / "mydata", "--num_images", 2,
             "--questions", tmp_path / "questions.txt", "--output_dir", out, "--max_new_tokens", 4)
    rows = read_csv(out / "data.csv")[1]
    assert sorted(keys(rows)) == sorted((f"images/mydata-test-{i:05d}.png", q) for i in range(2) for q in QUESTIONS)
    assert np.asarray(Image.open(out / "images/mydata-test-00001.png")).max() == round(5 * 255 / 16)


def test_unreadable_images_are_skipped_and_counted(teacher, tmp_path, capsys):
    write_digits(tmp_path / "in", 1)
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(tmp_path / "in" / "magenta.jpg")  # readable, not PNG-writable
    (tmp_path / "in" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (tmp_path / "in" / "empty.jpg").write_bytes(b"")
    (tmp_path / "in" / "notes.txt").write_text("not an image, not a candidate")
    generate("--teacher", teacher, "--image_dir", tmp_path / "in", "--output_dir", tmp_path / "out",
             "--questions", json.dumps(QUESTIONS), "--max_new_tokens", 4)
    rows = read_csv(tmp_path / "out" / "data.csv")[1]
    assert len(rows) == 2 * 2 and len(list((tmp_path / "out" / "images").iterdir())) == 2
    magenta = next(image for image, _, _ in rows if "magenta" in image)
    assert Image.open(tmp_path / "out" / magenta).convert("RGB").getpixel((4, 4)) == (255, 0, 255)
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: skipped")]
    assert len(warning) == 1 and "skipped 2 unreadable" in warning[0]
    assert "corrupt.png" in warning[0] and "empty.jpg" in warning[0] and "notes.txt" not in warning[0]


def test_empty_answers_are_not_written_and_asked_again_on_rerun(teacher, tmp_path, capsys):
    write_digits(tmp_path / "in", 2)
    silent = build_teacher(tmp_path / "silent", silent=True)
    common = ["--image_dir", tmp_path / "in", "--output_dir", tmp_path / "out", "--questions", json.dumps(QUESTIONS),
              "--max_new_tokens", 4]
    with pytest.raises(SystemExit) as exit_info:  # nothing but empty answers: no rows, so no dataset
        generate("--teacher", silent, *common)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "4 empty teacher answer(s)" in err and "data.csv: no rows" in err
    assert read_csv(tmp_path / "out" / "data.csv") == (["image", "question", "answer"], [])
    generate("--teacher", teacher, *common)
    assert len(set(keys(read_csv(tmp_path / "out" / "data.csv")[1]))) == 4


def test_resume_after_sigkill_and_torn_last_line(teacher, tmp_path):
    write_digits(tmp_path / "in", 20)
    out, csv_path, total = tmp_path / "out", tmp_path / "out" / "data.csv", 20 * 5
    args = ["--teacher", teacher, "--image_dir", tmp_path / "in", "--output_dir", out,
            "--batch_size", 1, "--max_new_tokens", 48]
    process = subprocess.Popen([sys.executable, "-m", "train.generate_dataset", *map(str, args)], cwd=ROOT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while (not csv_path.exists() or csv_path.read_bytes().count(b".png,") < 4) and process.poll() is None:
        assert time.monotonic() < deadline, "the generator wrote no rows in time"
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    header, finished = read_csv(csv_path)
    assert header == ["image", "question", "answer"] and 4 <= len(finished) < total
    assert all(len(row) == 3 and row[2] for row in finished)
    # Mark the finished rows, so a rerun that regenerated them (same greedy answers) would show; turn the last
    # one into a record torn by a kill mid-write, inside a quoted multi-line answer.
    kept = [[image, question, f"KEPT {number}"] for number, (image, question, _) in enumerate(finished[:-1])]
    torn_image, torn_question, torn_answer = finished[-1]
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *kept])
        handle.write(f'{torn_image},{torn_question},"half an ans\r\n')

    generate(*args)
    rows = read_csv(csv_path)[1]
    assert len(rows) == total and len(set(keys(rows))) == total  # none lost, none duplicated
    assert rows[:len(kept)] == kept  # finished rows kept as they were, not asked again
    assert sum(answer.startswith("KEPT") for _, _, answer in rows) == len(kept)
    assert dict(((image, q), a) for image, q, a in rows)[torn_image, torn_question] == torn_answer


def launch_two_processes(args: list, kill_after_rows: int | None = None) -> int:
    """`accelerate launch` of two CPU processes (gloo) of the step; with `kill_after_rows`, one process is SIGKILLed
    once its shard holds that many rows (the launcher then stops the other). Returns the launch's exit status."""
    from tests.test_multiprocess import ACCELERATE, free_port

    command = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               "-m", "train.generate_dataset", *map(str, args)]
    launch = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    if kill_after_rows:
        shard = Path(args[args.index("--output_dir") + 1]) / "shards" / "data-1-of-2.csv"
        deadline = time.monotonic() + 120
        while not (shard.exists() and shard.read_bytes().count(b".png,") >= kill_after_rows):
            assert launch.poll() is None and time.monotonic() < deadline, "the second process wrote no rows in time"
            time.sleep(0.005)
        os.kill(worker_pid(launch.pid, rank=1), signal.SIGKILL)
    _, errors = launch.communicate(timeout=300)
    assert kill_after_rows or launch.returncode == 0, errors[-3000:]
    return launch.returncode


def worker_pid(launcher: int, rank: int) -> int:
    """The launch's process of that rank (torchrun gives each worker its RANK in the environment)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor not in (None, 0, 1, launcher):
            ancestor = parents.get(ancestor)
        if ancestor == launcher:
            try:
                if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no process of rank {rank} under the launcher {launcher}")


@pytest.mark.multiprocess
def test_two_processes_write_what_one_writes_also_after_one_is_killed(teacher, tmp_path):
    """Images split i, i+N, ... across processes, each with its own shard, merged in one process's order: the same
    data.csv and Parquet splits, byte for byte, from one process, two, and two of which one was killed and rerun."""
    write_digits(tmp_path / "in", 12)
    outputs = {name: tmp_path / name for name in ("one", "two", "killed")}
    common = ["--teacher", teacher, "--image_dir", tmp_path / "in", "--batch_size", 1, "--max_new_tokens", 48,
              "--test_fraction", 0.25]
    generate(*common, "--output_dir", outputs["one"])
    launch_two_processes([*common, "--output_dir", outputs["two"]])
    assert launch_two_processes([*common, "--output_dir", outputs["killed"]], kill_after_rows=3) != 0
    assert not (outputs["killed"] / "data.csv").exists(), "the launch finished before a process was killed"
    launch_two_processes([*common, "--output_dir", outputs["killed"]])
    expected = (outputs["one"] / "data.csv").read_bytes()
    assert len(read_csv(outputs["one"] / "data.csv")[1]) == 12 * 5
    for name in ("two", "killed"):
        assert (outputs[name] / "data.csv").read_bytes() == expected, name
        assert not (outputs[name] / "shards").exists() or not list((outputs[name] / "shards").iterdir())
        for split in ("train", "test"):
            assert read_parquet(outputs[name], split) == read_parquet(outputs["one"], split), (name, split)


def read_parquet(output: Path, split: str) -> list:
    from datasets import load_dataset

    rows = load_dataset("parquet", data_files=str(output / "parquet" / f"{split}.parquet"), split="train")
    return [(json.dumps(row["messages"]), row["images"][0].tobytes()) for row in rows]


@pytest.mark.parametrize("case", ["no-folder", "no-images", "inline-json", "json-file", "not-strings",
                                  "no-questions-file", "column", "teacher", "csv-header", "top-p",
                                  "vllm-not-installed"])
def test_invalid_input_is_one_line_and_exit_status_2(teacher, tmp_path, capsys, case):
    write_digits(tmp_path / "in", 1)
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.txt").write_text("no images here")
    (tmp_path / "bad.json").write_text('[\n  "What is in this picture?",\n  oops\n]')
    args = {"--teacher": teacher, "--image_dir": tmp_path / "in", "--output_dir": tmp_path / "out"}
    expected = {
        "no-folder": ({"--image_dir": tmp_path / "missing"}, ["missing", "no such folder"]),
        "no-images": ({"--image_dir": tmp_path / "nothing"}, ["nothing", "no image files"]),
        "inline-json": ({"--questions": '["What is in this picture?",'}, ["--questions", "invalid JSON"]),
        "json-file": ({"--questions": tmp_path / "bad.json"}, ["bad.json", "invalid JSON at line 3"]),
        "not-strings": ({"--questions": '["What is in this picture?", 7]'}, ["item 2", "non-empty string"]),
        "no-questions-file": ({"--questions": tmp_path / "q.txt"}, ["q.txt", "no such file"]),
        "column": ({"--image_dir": None, "--dataset_name": tmp_path / "ds", "--image_column": "picture"},
                   ["column 'picture'"]),
        "teacher": ({"--teacher": tmp_path / "no-teacher"}, ["--teacher", "no-teacher", "no such folder"]),
        "csv-header": ({}, ["data.csv", "header"]),
        "top-p": ({"--temperature": 0.7, "--top_p": 0}, ["--top_p 0", "0 < top_p <= 1"]),
        "vllm-not-installed": ({"--backend": "vllm"}, ["--backend vllm", "vLLM is not installed"]),
    }
    overrides, needles = expected[case]
    if case == "vllm-not-installed" and importlib.util.find_spec("vllm"):
        pytest.skip("vLLM is installed here; tests/serve/run.py runs this backend")
    if case == "column":
        from datasets import Dataset

        Dataset.from_dict({"img": ["not used"]}).to_parquet(str(tmp_path / "ds" / "test.parquet"))
    if case == "csv-header":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "data.csv").write_text("question_text,label\nWhat?,1\n")
    argv = [a for flag, value in {**args, **overrides}.items() if value is not None for a in (flag, value)]
    with pytest.raises(SystemExit) as exit_info:
        generate(*argv)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and all(needle in errors[0] for needle in needles), errors


def test_cli_process_error_without_traceback(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "train.generate_dataset", "--image_dir", str(tmp_path / "missing"),
                             "--output_dir", str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"generate_dataset.py: error: --image_dir {tmp_path / 'missing'}: "
                                                  "no such folder"]
