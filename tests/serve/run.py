"""`make test-serve`: a saved SigPhi folder served by vLLM's CPU build, answer for answer against transformers.

    python -m tests.serve.run                       # builds the quickstart's SigPhi folder first (~4 min)
    python -m tests.serve.run --folder outputs/quickstart/sigphi --dataset outputs/quickstart/data/digits

Every answer is greedy and compared with transformers' `generate` on the same folder in this process:
1. offline: the 360 held-out digits in **one** `LLM.chat` call with vLLM's default scheduler (it packs the requests
   of a step into one row, which SigPhi's context check must judge sequence by sequence): every answer identical;
2. bf16: the same call with `dtype="bfloat16"`; vLLM casts the whole model, the vision tower SigPhi keeps in fp32
   under transformers included, so the accuracy difference is reported;
3. the OpenAI-compatible server on 127.0.0.1: a digit sent as a base64 data URL gets generate's answer;
4. concurrent requests with images of mixed sizes and prompts of different lengths: each gets generate's answer;
5. a request longer than the context gets vLLM's HTTP 400, and the server answers the next request;
6. `train.generate_dataset --backend vllm` with the tiny SmolVLM-architecture teacher writes the transformers
   backend's rows, byte for byte;
7. the same, killed (SIGKILL) after its first rows and run again: no row lost or repeated;
8. choice scores from vLLM's prompt log-probabilities (10 digits × the 10 answers, after the chat prompt) against
   the same log-probabilities from a transformers forward: how a choice-scoring generator would run on vLLM.
Prints a table, writes the numbers to `--output_file`, exits non-zero on any failure.
"""

import argparse
import csv
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.serve.engine import (ROOT, chat_completion, ensure_vllm_venv, offline_answers, offline_items, served,
                                vllm_environment)
from tests.test_generate_dataset import build_teacher, write_digits
from train.common.vqa_data import conversation, load_conversations, row_question_answer
from train.sigphi.evaluation import evaluate_sigphi, normalise
from train.sigphi.loading import load_sigphi


@dataclass
class Request:
    image: Image.Image
    question: str

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.image.save(buffer, "PNG")
        return buffer.getvalue()


def quickstart_folder(workdir: Path) -> tuple[Path, Path]:
    """(SigPhi folder, digits dataset) of a fresh SigPhi-only quickstart run."""
    output = workdir / "quickstart"
    subprocess.run([sys.executable, "-m", "train.quickstart", "--output_dir", str(output),
                    "--skip_retriever_generator"], check=True, timeout=1800)
    return output / "sigphi", output / "data" / "digits"


@torch.no_grad()
def generate_answer(model, processor, request: Request, max_new_tokens: int = 16) -> str:
    prompt = processor.apply_chat_template(conversation(request.question), add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[[request.image]], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def choice_token_counts(processor, prompt: str, choices: list[str]) -> list[int]:
    """How many tokens each choice adds after `prompt` (tokenised together, as both engines score them)."""
    n_prompt = len(processor.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return [len(processor.tokenizer(prompt + choice, add_special_tokens=False)["input_ids"]) - n_prompt
            for choice in choices]


@torch.no_grad()
def choice_scores(model, processor, image: Image.Image, prompt: str, choices: list[str]) -> list[float]:
    """log p(choice | image, prompt) for each choice, summed over the choice's tokens, from one forward each."""
    scores = []
    for choice, n_choice in zip(choices, choice_token_counts(processor, prompt, choices)):
        inputs = processor(text=[prompt + choice], images=[[image]], return_tensors="pt")
        ids = inputs["input_ids"][0]
        logprobs = model(**inputs).logits[0, :-1].log_softmax(-1).gather(-1, ids[1:, None])[:, 0]
        scores.append(float(logprobs[-n_choice:].sum()))
    return scores


def vllm_choice_scores(scored: list[dict], processor, prompt: str, choices: list[str]) -> list[float]:
    """The same sums from vLLM's prompt log-probabilities (one entry of `scored` per choice)."""
    return [sum(entry["logprobs"][-n_choice:]) for entry, n_choice in zip(scored, choice_token_counts(processor, prompt,
                                                                                                       choices))]


def mixed_requests(digit_images: list[Image.Image]) -> list[Request]:
    """Images from 8×8 to 640×97 pixels, grey and colour, with questions from one word to ~60 words."""
    rng = np.random.default_rng(0)
    sizes = [(8, 8), (640, 97), (33, 300), (224, 224), (5, 61), (128, 40)]
    questions = ["Digit?", "What digit is shown in this image?",
                 "Look closely at the picture, which was scanned from a handwritten form. " * 4 + "What digit is it?"]
    requests = []
    for index, size in enumerate(sizes):
        picture = digit_images[index].resize(size) if index % 2 else Image.fromarray(
            rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        requests.append(Request(picture, questions[index % len(questions)]))
    return requests


def teacher_rows(python: Path, teacher: Path, images: Path, output: Path, backend: str,
                 kill_after_rows: int | None = None) -> list[list[str]]:
    """The rows of data.csv after `train.generate_dataset` (run from this checkout in `python`'s venv); with
    `kill_after_rows`, the run is SIGKILLed once that many rows are on disk, then run again to the end."""
    command = [str(python), "-m", "train.generate_dataset", "--teacher", str(teacher), "--image_dir", str(images),
               "--output_dir", str(output), "--backend", backend, "--batch_size", "4", "--max_new_tokens", "16",
               "--gpu_memory_utilization", "0.2"]
    environment = {**vllm_environment(), "PYTHONPATH": str(ROOT)}
    csv_path = output / "data.csv"

    def rows() -> list[list[str]]:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            return list(csv.reader(handle))[1:]

    if kill_after_rows:
        run = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        while run.poll() is None and not (csv_path.exists() and len(rows()) >= kill_after_rows):
            time.sleep(0.05)
        if run.poll() is not None:
            raise RuntimeError("the vLLM teacher finished before it could be killed")
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        print(f"killed the vLLM teacher with {len(rows())} rows written", flush=True)
    subprocess.run(command, env=environment, check=True, capture_output=True, timeout=900)
    return rows()


def check(results: list, name: str, passed: bool, detail: str) -> None:
    results.append((name, passed, detail))
    print(f"[{'ok' if passed else 'FAIL'}] {name}: {detail}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", help="A saved SigPhi folder (default: build the quickstart's).")
    parser.add_argument("--dataset", help="Its digits dataset folder (with --folder).")
    parser.add_argument("--output_file", default="outputs/test-serve.json")
    args = parser.parse_args()
    results, numbers = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        started = time.perf_counter()
        python = ensure_vllm_venv()
        numbers["venv_seconds"] = round(time.perf_counter() - started, 1)
        folder, dataset = ((Path(args.folder), Path(args.dataset)) if args.folder else quickstart_folder(workdir))
        folder = folder.resolve()
        test_rows = load_conversations(str(dataset), "test")
        model, processor = load_sigphi(str(folder))
        reference = evaluate_sigphi(model, processor, test_rows)
        expected = [row_question_answer(row)[1] for row in test_rows]
        items = offline_items(test_rows, workdir)
        generated = [answer for _, _, answer in reference["samples"]]

        def accuracy(answers: list[str]) -> float:
            return round(sum(normalise(a) == normalise(e) for a, e in zip(answers, expected)) / len(expected), 4)

        numbers["transformers_accuracy"] = accuracy(generated)
        choices = [str(digit) for digit in range(10)]
        prompt = processor.apply_chat_template(conversation(items[0]["question"]), add_generation_prompt=True)
        scored_items = [{**item, "scored_prompts": [prompt + choice for choice in choices]} if index < 10 else item
                        for index, item in enumerate(items)]
        for dtype in ("float32", "bfloat16"):
            run = offline_answers(python, folder, scored_items if dtype == "float32" else items, workdir, dtype=dtype)
            same = sum(a == b for a, b in zip(run["answers"], generated))
            numbers[f"vllm_{dtype}"] = {"identical": same, "n": len(items), "accuracy": accuracy(run["answers"]),
                                        "load_seconds": run["load_seconds"], "answer_seconds": run["answer_seconds"]}
            if dtype == "float32":
                check(results, "offline batch of 360, float32", same == len(items),
                      f"{same}/{len(items)} answers identical to generate; accuracy {accuracy(run['answers'])} "
                      f"vs {numbers['transformers_accuracy']}")
                differences = []
                for index in range(10):
                    image = test_rows[index]["images"][0]
                    scored = run["prompt_logprobs"][index * 10:(index + 1) * 10]
                    differences += [abs(a - b) for a, b in zip(choice_scores(model, processor, image, prompt, choices),
                                                                vllm_choice_scores(scored, processor, prompt, choices))]
                numbers["choice_score_max_difference"] = max(differences)
                check(results, "choice scores from vLLM's prompt log-probabilities", max(differences) <= 1e-3,
                      f"largest difference from transformers over {len(differences)} (digit, choice) pairs: "
                      f"{max(differences):.2e} (limit 1e-3)")
            else:
                check(results, "offline batch of 360, bfloat16 (tower too)", True,
                      f"{same}/{len(items)} identical to fp32 generate; accuracy {accuracy(run['answers'])} "
                      f"vs {numbers['transformers_accuracy']}")

        digit_images = [row["images"][0] for row in test_rows]
        first = Request(digit_images[0], items[0]["question"])
        mixed = mixed_requests(digit_images)
        mixed_expected = [generate_answer(model, processor, request) for request in mixed]
        long_question = "seven " * (model.config.text_config.max_position_embeddings + 10)
        started = time.perf_counter()
        with served(python, folder, workdir / "server.log") as url:
            numbers["server_start_seconds"] = round(time.perf_counter() - started, 1)
            status, answer = chat_completion(url, first.png(), first.question)
            check(results, "server: one base64 image", status == 200 and answer == generated[0],
                  f"HTTP {status}, answer {answer!r}, generate {generated[0]!r}")
            with ThreadPoolExecutor(len(mixed)) as pool:
                replies = list(pool.map(lambda request: chat_completion(url, request.png(), request.question), mixed))
            same = sum(status == 200 and answer == want for (status, answer), want in zip(replies, mixed_expected))
            check(results, "server: concurrent mixed sizes and lengths", same == len(mixed),
                  f"{same}/{len(mixed)} answers identical to generate")
            status, message = chat_completion(url, first.png(), long_question)
            check(results, "server: a request longer than the context", status == 400,
                  f"HTTP {status}: {message[:160]}")
            status, answer = chat_completion(url, first.png(), first.question)
            check(results, "server: the next request after it", status == 200 and answer == generated[0],
                  f"HTTP {status}, answer {answer!r}")
        teacher = build_teacher(workdir / "teacher")  # head size 32: vLLM's CPU attention has no kernel for 16
        images = workdir / "teacher-images"
        write_digits(images, 24)
        by_transformers = teacher_rows(Path(sys.executable), teacher, images, workdir / "teacher-hf", "transformers")
        by_vllm = teacher_rows(python, teacher, images, workdir / "teacher-vllm", "vllm")
        same = sum(a == b for a, b in zip(by_transformers, by_vllm))
        numbers["teacher_rows"] = {"identical": same, "n": len(by_transformers)}
        check(results, "generate_dataset --backend vllm", same == len(by_transformers) == len(by_vllm),
              f"{same}/{len(by_transformers)} rows identical to the transformers backend's ({len(by_vllm)} written)")
        resumed = teacher_rows(python, teacher, images, workdir / "teacher-killed", "vllm", kill_after_rows=8)
        check(results, "generate_dataset --backend vllm, killed and rerun", resumed == by_vllm,
              f"{len(resumed)} rows after the rerun, {len(set(map(tuple, resumed)))} distinct; "
              f"{'the same rows in the same order' if resumed == by_vllm else 'rows differ'}")
    Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_file).write_text(json.dumps({"checks": results, "numbers": numbers}, indent=2))
    failed = [name for name, passed, _ in results if not passed]
    print(f"\n{len(results) - len(failed)}/{len(results)} serve checks passed; numbers in {args.output_file}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
