"""Throughput of the two engines on the same saved folders, measured in one run (`make bench-serve`).

    python -m bench.serving                          # builds the quickstart's SigPhi folder first (~4 min)
    python -m bench.serving --folder outputs/quickstart/sigphi --dataset outputs/quickstart/data/digits

1. SigPhi answering the 360 held-out digits (greedy, at most 16 new tokens): transformers' `generate` at batch 1
   and at larger batches (left-padded), against vLLM's offline engine with its default scheduler (one `LLM.chat`
   call). Engine start-up is reported apart from answering.
2. The teacher of `train.generate_dataset` (the tiny SmolVLM-architecture teacher; 60 images × the seed's five
   questions, at most 16 new tokens): the transformers backend at its default batch of 8 and at 64, against the
   vLLM backend given all 300 pairs at once. Both run `train.common.teachers`, the code the step runs.
Writes `bench/results/serving.json` and re-renders BENCHMARKS.md (section 13) from the stored results.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import write_report
from bench.run import machine
from tests.serve.engine import ROOT, ensure_vllm_venv, offline_answers, offline_items, vllm_environment
from tests.serve.run import quickstart_folder
from tests.test_generate_dataset import build_teacher, write_digits
from train.common.vqa_data import load_conversations
from train.sigphi.evaluation import evaluate_sigphi
from train.sigphi.loading import load_sigphi

RESULTS = "bench/results/serving.json"
SECTION_TITLE = "## 13. Serving: vLLM against transformers `generate` (same folder, same machine, one run)"
SIGPHI_BATCHES = (1, 8, 32, 128, 360)
TEACHER_IMAGES = 60
# Run in either venv with this checkout on PYTHONPATH: times `teacher.answer` over every (image, question) pair.
TEACHER_TIMING = """
import json, sys, time
from pathlib import Path
from PIL import Image
from train.common.teachers import TEACHER_BACKENDS
from train.generate_dataset import SEED_QUESTIONS
backend, teacher, images, batch = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
start = time.perf_counter()
extra = {"memory_fraction": 0.2} if backend == "vllm" else {}
model = TEACHER_BACKENDS[backend](teacher, "auto", "auto", False, 16, **extra)
loaded = time.perf_counter()
pairs = [(Image.open(path), question) for path in sorted(images.iterdir()) for question in SEED_QUESTIONS]
for first in range(0, len(pairs), batch):
    chunk = pairs[first:first + batch]
    model.answer([image for image, _ in chunk], [question for _, question in chunk])
done = time.perf_counter()
print("RESULT", json.dumps({"pairs": len(pairs), "load_seconds": round(loaded - start, 2),
                            "answer_seconds": round(done - loaded, 3)}))
"""


def sigphi_throughput(python: Path, folder: Path, dataset: Path, workdir: Path) -> dict:
    rows = load_conversations(str(dataset), "test")
    model, processor = load_sigphi(str(folder))
    evaluate_sigphi(model, processor, rows.select(range(8)), batch_size=8)  # warm-up
    transformers_rates = {}
    for batch in SIGPHI_BATCHES:
        start = time.perf_counter()
        evaluate_sigphi(model, processor, rows, batch_size=batch)
        transformers_rates[batch] = round(len(rows) / (time.perf_counter() - start), 1)
    run = offline_answers(python, folder, offline_items(rows, workdir), workdir)
    return {"n": len(rows), "transformers_answers_per_second": transformers_rates,
            "vllm_answers_per_second": round(len(rows) / run["answer_seconds"], 1),
            "vllm_load_seconds": run["load_seconds"]}


def teacher_throughput(python: Path, workdir: Path) -> dict:
    teacher = build_teacher(workdir / "teacher")
    images = workdir / "images"
    write_digits(images, TEACHER_IMAGES)
    runs = {}
    for label, interpreter, backend, batch in (("transformers, batch 8", sys.executable, "transformers", 8),
                                                ("transformers, batch 64", sys.executable, "transformers", 64),
                                                ("vllm, all pairs at once", python, "vllm", 100_000)):
        result = subprocess.run([str(interpreter), "-c", TEACHER_TIMING, backend, str(teacher), str(images),
                                 str(batch)], capture_output=True, text=True, timeout=900,
                                env={**vllm_environment(), "PYTHONPATH": str(ROOT)}, cwd=workdir)
        if result.returncode != 0:
            raise RuntimeError(f"{label}: the timing run failed:\n{result.stderr[-3000:]}")
        timing = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))[7:])
        runs[label] = {**timing, "pairs_per_second": round(timing["pairs"] / timing["answer_seconds"], 1)}
    return runs


def render_section(results: dict) -> list[str]:
    sigphi, teacher = results["sigphi"], results["teacher"]
    rates = sigphi["transformers_answers_per_second"]
    best_batch = max(rates, key=rates.get)
    vllm_rate = sigphi["vllm_answers_per_second"]
    command = " ".join(["python -m bench.serving", *results["argv"][1:]])  # `make bench-serve` when no flags
    lines = [SECTION_TITLE, "", f"`{command}`, {results['date']}; {results['machine']['cores']} cores; "
             "vLLM's CPU build 0.32.0 in its own venv (`tests/serve/engine.py`); greedy, at most 16 new tokens. "
             "Rates count answering only; engine start-up is given apart.", "",
             f"SigPhi (the quickstart's folder, tiny), {sigphi['n']} held-out digits:", "",
             "| engine | answers/s | vs transformers batch 1 | vs transformers best |", "|---|---|---|---|"]
    for batch, rate in rates.items():
        lines.append(f"| transformers `generate`, batch {batch} | {rate} | {rate / rates['1']:.2f}× | "
                     f"{rate / rates[best_batch]:.2f}× |")
    lines += [f"| vLLM `LLM.chat`, one call (start-up {sigphi['vllm_load_seconds']} s) | {vllm_rate} | "
              f"{vllm_rate / rates['1']:.2f}× | {vllm_rate / rates[best_batch]:.2f}× |", "",
              f"Teacher (`train.generate_dataset`, tiny SmolVLM-architecture teacher), "
              f"{next(iter(teacher.values()))['pairs']} (image, question) pairs:", "",
              "| backend | pairs/s | start-up (s) |", "|---|---|---|"]
    for label, run in teacher.items():
        lines.append(f"| {label} | {run['pairs_per_second']} | {run['load_seconds']} |")
    return lines + ["", "At tiny shapes every step is a few small matmuls, so per-step overhead decides: these "
                    "ratios say how the engines' overheads compare on a CPU, not what vLLM gains at real sizes on "
                    "a GPU, where its paged KV cache and continuous batching pay off.", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", help="A saved SigPhi folder (default: build the quickstart's).")
    parser.add_argument("--dataset", help="Its digits dataset folder (with --folder).")
    args = parser.parse_args()
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": machine(), "argv": sys.argv}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        python = ensure_vllm_venv()
        folder, dataset = ((Path(args.folder), Path(args.dataset)) if args.folder else quickstart_folder(workdir))
        results["sigphi"] = sigphi_throughput(python, folder.resolve(), dataset, workdir)
        results["teacher"] = teacher_throughput(python, workdir)
    Path(RESULTS).write_text(json.dumps(results, indent=2))
    with open("bench/results/full.json") as handle:
        write_report(json.load(handle), "BENCHMARKS.md", plot_dir="docs")
    print("\n".join(render_section(json.loads(Path(RESULTS).read_text()))))


if __name__ == "__main__":
    main()
