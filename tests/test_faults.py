"""Fault suite: odd but valid input simply works; bad input is refused with a `ValueError` that says what is wrong
and where (file, row, column), and the command-line steps turn it into exit status 2 and one line, no traceback.

Nothing here may surface as an opaque error from deep inside torch, PIL or the csv module. The cases are listed in
tables (`ODD_IMAGES`, `BROKEN_IMAGE_FILES`, `BAD_PAIRS_FILES`, `BAD_RETRIEVAL_CSVS`, ...) so the suite reads as the
list of faults it guards against.
"""

import csv
import io
import json
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import chat, random_image, stop_after_checkpoint, write_digits_dataset
from train.common.cli import InvalidInput, run_cli
from train.common.vqa_data import conversation_row, read_pairs_file, write_parquet_splits
from train.evaluate import SigPhiEvaluateArguments
from train.evaluate import main as evaluate_main

PAIR_HEADER = "image,question,answer"


# --- odd but valid images: processor and generate ---------------------------------------------------------------

ODD_IMAGES = {
    "grayscale L": lambda: Image.new("L", (30, 40), 128),
    "grayscale with alpha LA": lambda: Image.new("LA", (30, 40), (128, 100)),
    "premultiplied alpha La": lambda: Image.new("La", (30, 40)),
    "palette P": lambda: Image.new("P", (30, 40), 3),
    "palette with transparency": lambda: Image.new("PA", (30, 40)),
    "RGBA": lambda: Image.new("RGBA", (30, 40), (1, 2, 3, 4)),
    "16-bit I;16": lambda: Image.fromarray(np.full((40, 30), 40000, dtype=np.uint16)),
    "16-bit big-endian I;16B": lambda: Image.fromarray(np.full((40, 30), 40000, dtype=">u2")),
    "32-bit integer I": lambda: Image.fromarray(np.full((40, 30), 70000, dtype=np.int32)),
    "float F": lambda: Image.fromarray(np.full((40, 30), 0.5, dtype=np.float32)),
    "CMYK": lambda: Image.new("CMYK", (30, 40), (10, 20, 30, 40)),
    "YCbCr": lambda: Image.new("YCbCr", (30, 40), (100, 120, 140)),
    "1-bit": lambda: Image.new("1", (30, 40), 1),
    "1x1": lambda: Image.new("RGB", (1, 1), (255, 0, 0)),
    "10000x10": lambda: Image.new("RGB", (10000, 10), (0, 255, 0)),
    "10x10000": lambda: Image.new("RGB", (10, 10000), (0, 0, 255)),
}


@pytest.mark.parametrize("name", list(ODD_IMAGES))
def test_odd_images_go_through_the_processor_and_generate(tiny, name):
    model, processor = tiny
    inputs = processor(text=[chat(processor)], images=[[ODD_IMAGES[name]()]], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 32, 32) and torch.isfinite(inputs["pixel_values"]).all()
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 2)


def test_an_image_without_pixels_is_refused_by_its_size(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match="An image of 0×5 pixels is empty"):
        processor(text=[chat(processor)], images=[[Image.new("RGB", (0, 5))]], return_tensors="pt")


# --- placeholders and context length ------------------------------------------------------------------------------

def test_a_question_that_types_its_own_image_placeholder_is_one_placeholder_too_many(tiny):
    _, processor = tiny
    text = chat(processor, question="What is <image>?")
    with pytest.raises(ValueError, match="2 <image> tokens and 1 images"):
        processor(text=[text], images=[[random_image(0)]], return_tensors="pt")


def test_more_images_than_placeholders_in_a_batch_names_both_totals(tiny):
    _, processor = tiny
    texts = [chat(processor), chat(processor, n_images=0)]
    with pytest.raises(ValueError, match="1 <image> tokens and 2 images"):
        processor(text=texts, images=[[random_image(0)], [random_image(1)]], return_tensors="pt", padding=True)


def test_an_image_given_to_the_wrong_sample_of_a_batch_is_refused_even_when_totals_match(tiny):
    _, processor = tiny
    texts = [chat(processor, n_images=2), chat(processor, n_images=0)]
    with pytest.raises(ValueError, match="Sample 0 of the batch has 2 <image> tokens and 1 images"):
        processor(text=texts, images=[[random_image(0)], [random_image(1)]], return_tensors="pt", padding=True)


def long_prompt(processor, n_tokens: int) -> dict:
    """Processor inputs of one image and a question making the prompt at least `n_tokens` long."""
    return processor(text=[chat(processor, question="seven " * n_tokens)], images=[[random_image(0)]],
                     return_tensors="pt")


def test_a_prompt_longer_than_the_context_is_refused_before_the_decoder_runs(tiny):
    model, processor = tiny
    context = model.config.text_config.max_position_embeddings
    inputs = long_prompt(processor, context)
    n_tokens = inputs["input_ids"].shape[1]
    assert n_tokens > context
    message = rf"sequence is {n_tokens} tokens long .* model's context is {context} tokens"
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        model(**inputs)
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        model.generate(**inputs, max_new_tokens=2)


def test_generating_past_the_context_is_refused_at_the_first_token_that_does_not_fit(tiny):
    model, processor = tiny
    context = model.config.text_config.max_position_embeddings
    inputs = long_prompt(processor, context - 40)
    room = context - inputs["input_ids"].shape[1] + 1  # the last new token is predicted, never fed back
    assert 1 < room < 20
    with torch.no_grad():
        fits = model.generate(**inputs, max_new_tokens=room, min_new_tokens=room, do_sample=False)
        assert fits.shape[1] == context + 1
        with pytest.raises(ValueError, match=rf"{context + 1} tokens long \({context} already processed, 1 new\)"):
            model.generate(**inputs, max_new_tokens=room + 1, min_new_tokens=room + 1, do_sample=False)


def packed_row(processor, prompts: list[dict]) -> dict:
    """Several prompts packed into one (1, total) row with positions restarting at each, as vLLM schedules a step."""
    return {"input_ids": torch.cat([p["input_ids"] for p in prompts], dim=1),
            "position_ids": torch.cat([torch.arange(p["input_ids"].shape[1]) for p in prompts])[None],
            "pixel_values": torch.cat([p["pixel_values"] for p in prompts])}


def test_a_packed_row_longer_than_the_context_is_judged_by_each_sequence_own_positions(tiny):
    model, processor = tiny
    context = model.config.text_config.max_position_embeddings
    fitting = [long_prompt(processor, context // 2 - 40), long_prompt(processor, context // 2 + 20)]
    packed = packed_row(processor, fitting)
    assert packed["input_ids"].shape[1] > context > max(p["input_ids"].shape[1] for p in fitting)
    with torch.no_grad():
        logits = model(**packed, use_cache=False).logits[0]  # no cache: transformers then masks by positions
        alone = torch.cat([model(**prompt).logits[0] for prompt in fitting])
    torch.testing.assert_close(logits, alone, atol=1e-4, rtol=1e-4)  # packed sequences do not see each other

    too_long = long_prompt(processor, context)
    length = too_long["input_ids"].shape[1]
    with torch.no_grad(), pytest.raises(ValueError, match=rf"sequence is {length} tokens long \(its last position id "
                                                            rf"is {length - 1}\) but the model's context is {context}"):
        model(**packed_row(processor, [fitting[0], too_long]))


# --- unreadable image files and malformed image-question-answer files ----------------------------------------------

def encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


def broken_image_files() -> dict[str, bytes]:
    png = encoded(random_image(0, (64, 64)), "PNG")
    jpeg = encoded(random_image(0, (64, 64)), "JPEG")
    return {"zero-byte.png": b"", "corrupt.png": b"\x89PNG\r\n\x1a\n" + b"garbage" * 10,
            "truncated.png": png[: len(png) // 2], "truncated.jpg": jpeg[: len(jpeg) // 2]}


BROKEN_IMAGE_FILES = list(broken_image_files())


@pytest.fixture
def data_dir(tmp_path):
    """A folder with one good image and the broken image files."""
    Image.new("L", (8, 8), 200).save(tmp_path / "ok.png")
    for name, content in broken_image_files().items():
        (tmp_path / name).write_bytes(content)
    return tmp_path


@pytest.mark.parametrize("name", BROKEN_IMAGE_FILES)
def test_unreadable_image_files_are_named_by_row_and_column(data_dir, name):
    path = data_dir / "data.csv"
    path.write_text(f"{PAIR_HEADER}\nok.png,Q?,a\n{name},Q?,a\n")
    with pytest.raises(InvalidInput, match=rf"data.csv, row 2, column 'image': cannot read image .*{name}"):
        read_pairs_file(path)


def write_bytes(folder, name: str, content: bytes | str):
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


# (file name, content, what the message must say after the file name)
BAD_PAIRS_FILES = {
    "missing column": ("data.csv", "image,question\nok.png,Q?\n", r": missing column\(s\) answer"),
    "empty cell": ("data.csv", f"{PAIR_HEADER}\nok.png,Q?,a\nok.png, ,a\n", r", row 2, column 'question': missing"),
    "number instead of text": ("data.json", json.dumps([{"image": "ok.png", "question": "Q?", "answer": 7}]),
                               r", row 1, column 'answer': expected text, got int 7"),
    "list instead of object": ("data.json", json.dumps([["ok.png", "Q?", "a"]]), r", row 1: expected an object"),
    "object instead of list": ("data.json", json.dumps({"image": "ok.png"}), r": expected a JSON list of objects"),
    "bad JSON": ("data.json", '[{"image": "ok.png",}]', r": invalid JSON at line 1, column 21"),
    "bad JSON Lines": ("data.jsonl", '{"image": "ok.png", "question": "Q?", "answer": "a"}\n{"image": \n',
                       r": invalid JSON at line 2, column 11"),
    "not UTF-8": ("data.csv", f"{PAIR_HEADER}\nok.png,Qu\xe9?,a\n".encode("latin-1"),
                  r": not UTF-8 text \(byte 0xe9 at offset 31\)"),
    "cell over the csv size limit": ("data.csv", f"{PAIR_HEADER}\nok.png,{'Q' * 200_000},a\n",
                                     r", row 1: field larger than field limit"),
    "placeholder in the question": ("data.csv", f"{PAIR_HEADER}\nok.png,What is <image>?,a\n",
                                    r", row 1, column 'question': contains the image placeholder '<image>'"),
    "placeholder in the answer": ("data.csv", f"{PAIR_HEADER}\nok.png,Q?,<image>\n",
                                  r", row 1, column 'answer': contains the image placeholder"),
    "image file missing": ("data.csv", f"{PAIR_HEADER}\nnope.png,Q?,a\n",
                           r", row 1, column 'image': image file not found"),
    "no rows": ("data.csv", f"{PAIR_HEADER}\n", r": no rows"),
}


@pytest.mark.parametrize("case", list(BAD_PAIRS_FILES))
def test_malformed_pairs_files_are_refused_naming_file_row_and_column(data_dir, case):
    name, content, message = BAD_PAIRS_FILES[case]
    path = write_bytes(data_dir, name, content)
    with pytest.raises(InvalidInput, match=f"^{re.escape(str(path))}{message}"):
        read_pairs_file(path)


def evaluate_cli_error(capsys, *argv: str) -> str:
    """Run `train.evaluate`'s command line in this process: it must exit with status 2 and print exactly one error
    line (progress bars of the data loading may come before it). Returns that line's message."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate_main, SigPhiEvaluateArguments, argv=list(argv))
    assert exit_info.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(error_lines) == 1
    return error_lines[0].split(": error: ", 1)[1]


@pytest.mark.parametrize("case", ["missing column", "bad JSON Lines", "not UTF-8", "placeholder in the question"])
def test_training_steps_report_a_bad_data_file_in_one_line(data_dir, tiny_dir, capsys, case):
    name, content, message = BAD_PAIRS_FILES[case]
    path = write_bytes(data_dir, name, content)
    error = evaluate_cli_error(capsys, "--model", str(tiny_dir), "--dataset", str(path))
    assert re.match(f"{re.escape(str(path))}{message}", error)


@pytest.mark.parametrize("case", ["two image slots for one image", "a placeholder typed into the question"])
def test_a_dataset_row_with_more_placeholders_than_images_is_named_before_training(tiny_dir, tmp_path, capsys, case):
    rows = [conversation_row(random_image(seed), "Q?", "a") for seed in range(3)]
    user_turn = rows[1]["messages"][0]["content"]
    if case == "two image slots for one image":
        user_turn.insert(0, {"type": "image", "text": None})
    else:
        user_turn[1]["text"] = "What is <image>?"
    write_parquet_splits({"train": rows}, tmp_path / "data")
    error = evaluate_cli_error(capsys, "--model", str(tiny_dir), "--dataset", str(tmp_path / "data"),
                               "--split", "train")
    assert error == (f"{tmp_path / 'data' / 'train.parquet'}, row 2, column 'messages': 2 image placeholder(s) for "
                     "1 image(s) in column 'images'")


def test_an_unknown_argument_is_named_in_one_line(data_dir, tiny_dir, capsys):
    dataset = write_bytes(data_dir, "data.csv", f"{PAIR_HEADER}\nok.png,Q?,a\n")
    error = evaluate_cli_error(capsys, "--model", str(tiny_dir), "--dataset", str(dataset), "--report_to", "x", "y")
    assert error == "unrecognized arguments: --report_to x y (see --help)"


@pytest.mark.parametrize("model, message", [("no-such-folder", "neither a model folder nor a reachable Hub repo"),
                                            ("folder-without-config", "no config.json, so not a saved model folder")])
def test_training_steps_report_a_path_that_holds_no_model_in_one_line(data_dir, capsys, model, message):
    (data_dir / "folder-without-config").mkdir()
    dataset = write_bytes(data_dir, "data.csv", f"{PAIR_HEADER}\nok.png,Q?,a\n")
    error = evaluate_cli_error(capsys, "--model", str(data_dir / model), "--dataset", str(dataset))
    assert error.startswith(f"{data_dir / model}: {message}")


def test_a_step_run_as_a_module_exits_with_status_2_and_no_traceback(data_dir, tiny_dir):
    """The same through `python -m`, as a user runs it: nothing but the one error line comes after the libraries'
    import-time warnings."""
    dataset = write_bytes(data_dir, "data.csv", f"{PAIR_HEADER}\ntruncated.png,Q?,a\n")
    result = subprocess.run([sys.executable, "-m", "train.evaluate", "--model", str(tiny_dir), "--dataset",
                             str(dataset)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"evaluate.py: error: {dataset}, row 1, column 'image': cannot read image")


# --- the retriever-generator's seed CSV (read by train.retrieval.task, another developer's module) ---------------

RETRIEVAL_HEADER = ["question_text", "question_image", "answer_choices", "label", "documents"]
GOOD_RETRIEVAL_ROW = {"question_text": "What colour?", "question_image": "ok.png",
                      "answer_choices": json.dumps(["red", "blue"]), "label": "0", "documents": json.dumps(["A fact."])}

# (changed cells, columns left out, what the message must say after the file name)
BAD_RETRIEVAL_CSVS = {
    "missing column": ({}, ["documents"], r": missing column\(s\) documents"),
    "label out of range": ({"label": "2"}, [], r", row 1, column 'label': 2 is out of range for 2 answer choices"),
    "negative label": ({"label": "-1"}, [], r", row 1, column 'label': -1 is out of range"),
    "label not an integer": ({"label": "red"}, [], r", row 1, column 'label': 'red' is not an integer"),
    "bad JSON": ({"answer_choices": '["red", "blue"'}, [], r", row 1, column 'answer_choices': invalid JSON"),
    "choices not a list": ({"answer_choices": '{"red": 1}'}, [], r", row 1, column 'answer_choices': expected a "),
    "document of the wrong type": ({"documents": "[1]"}, [], r", row 1, column 'documents', item 1: a document "),
    "zero-byte question image": ({"question_image": "zero-byte.png"}, [],
                                 r", row 1, column 'question_image': cannot read image"),
    "truncated question image": ({"question_image": "truncated.png"}, [],
                                 r", row 1, column 'question_image': cannot read image"),
    "corrupt image document": ({"documents": json.dumps([{"image": "corrupt.png"}])}, [],
                               r", row 1, column 'documents', item 1: cannot read image"),
}


@pytest.fixture
def load_retrieval_task():
    from train.retrieval.task import load_retrieval_task

    return load_retrieval_task


def write_retrieval_csv(folder, changes: dict, left_out: list[str]):
    columns = [column for column in RETRIEVAL_HEADER if column not in left_out]
    path = folder / "retrieval.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerow(GOOD_RETRIEVAL_ROW)
        writer.writerow({**GOOD_RETRIEVAL_ROW, **changes})
    return path


@pytest.mark.parametrize("case", list(BAD_RETRIEVAL_CSVS))
def test_malformed_retrieval_csvs_are_refused_naming_file_row_and_column(data_dir, load_retrieval_task, case):
    changes, left_out, message = BAD_RETRIEVAL_CSVS[case]
    path = write_retrieval_csv(data_dir, changes, left_out)
    message = message.replace("row 1", "row 2")  # the bad row comes after a good one
    with pytest.raises(InvalidInput, match=f"^{re.escape(str(path))}{message}"):
        load_retrieval_task(path)


def test_a_retrieval_csv_that_is_not_utf8_is_refused_by_name(data_dir, load_retrieval_task):
    path = write_retrieval_csv(data_dir, {"question_text": "Couleur ?"}, [])
    path.write_bytes(path.read_bytes().replace(b"Couleur", "Coul\xe9ur".encode("latin-1")))
    with pytest.raises(InvalidInput, match=f"^{re.escape(str(path))}: "):
        load_retrieval_task(path)


def test_a_retrieval_csv_row_with_missing_cells_is_refused_by_name(data_dir, load_retrieval_task):
    path = data_dir / "retrieval.csv"
    path.write_text(",".join(RETRIEVAL_HEADER) + "\nWhat colour?,ok.png\n")
    with pytest.raises(InvalidInput, match=f"^{re.escape(str(path))}, row 1, column 'answer_choices'"):
        load_retrieval_task(path)


def test_the_retriever_generator_step_exits_with_status_2_naming_the_missing_column(data_dir, load_retrieval_task):
    path = write_retrieval_csv(data_dir, {}, ["documents"])
    result = subprocess.run([sys.executable, "-m", "train.train_retriever_generator", "--preset", "tiny",
                             "--train_csv", str(path), "--eval_csv", str(path), "--output_dir",
                             str(data_dir / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"train_retriever_generator.py: error: {path}: missing column(s) documents (expected question_text, "
        "question_image, answer_choices + label and/or answers, documents)")


# --- interruption ------------------------------------------------------------------------------------------------

def final_state(output_dir, step: int) -> tuple[float, dict]:
    """(last logged loss, projector weights) of the checkpoint at `step`."""
    from safetensors.torch import load_file

    checkpoint = output_dir / f"checkpoint-{step}"
    losses = [entry["loss"] for entry in json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
              if "loss" in entry]
    weights = load_file(checkpoint / "model.safetensors")
    return losses[-1], {name: weights[name] for name in weights if "multi_modal_projector" in name}


def test_training_stopped_by_sigterm_resumes_to_the_same_final_loss(tiny_dir, tmp_path):
    """SIGKILL is covered in test_training_steps.py; SIGTERM is what schedulers and Ctrl-C-like stops send."""
    write_digits_dataset(tmp_path / "digits", n_train=32)

    def align(output_dir, *extra: str) -> list[str]:
        return [sys.executable, "-m", "train.align", "--model_name_or_path", str(tiny_dir), "--dataset",
                str(tmp_path / "digits"), "--output_dir", str(output_dir), "--per_device_train_batch_size", "8",
                "--max_steps", "12", "--save_strategy", "steps", "--save_steps", "3", "--logging_steps", "1",
                "--learning_rate", "1e-2", "--seed", "0", "--report_to", "none", *extra]

    straight = subprocess.Popen(align(tmp_path / "straight"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stopped = tmp_path / "stopped"
    stop_after_checkpoint(align(stopped), stopped, step=3, stop_signal=signal.SIGTERM)
    assert not (stopped / "checkpoint-12").exists(), "the run finished before it was stopped"
    subprocess.run(align(stopped, "--resume_from_checkpoint", "true"), check=True, capture_output=True)
    assert straight.wait(timeout=300) == 0

    resumed_loss, resumed = final_state(stopped, 12)
    straight_loss, straight = final_state(tmp_path / "straight", 12)
    assert resumed_loss == pytest.approx(straight_loss, rel=0.01)
    assert all(torch.allclose(resumed[name], straight[name], atol=1e-5) for name in straight)
