"""Joint training against corpus size: the bundled retrieval task's joint stage with 10 k and 200 k documents.

    python -m bench.joint_scaling                       # both sizes, each in a fresh process; writes the results
    python -m bench.joint_scaling --sizes 10000 --steps 4   # a quick look, nothing written

The corpus is the bundled `retrieval_vqa` task's (its training documents, pictures included) padded with text
distractors of the same kind (facts of made-up catalogues) up to each size. Each size runs in its own process, so
that its peak memory is its own: tiny random-weight parts (step time does not depend on what the weights learned),
`train_joint_epoch` over `--steps` batches of 8 gold-labelled questions. Reported apart: the corpus snapshot taken at
the start of the epoch (re-embedding and indexing every document: grows with the corpus by design, given per
document) and the training steps after it (time per step; resident memory the steps add above what the process held
once the snapshot was taken, sampled every 5 ms). The target: the 200 k steps within 1.3x of the 10 k ones, time and
memory.
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.run import machine

SIZES = (10_000, 200_000)
TARGET_RATIO = 1.3
RESULTS = "bench/results/joint_scaling.json"


class PeakMemory:
    """Resident memory sampled on a thread: the peak over a `with` block, above its value on entering."""

    def __enter__(self):
        import psutil

        self.process, self.running = psutil.Process(), True
        self.start = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()

    @property
    def added_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def one_size(n_documents: int, steps: int, seed: int = 0) -> dict:
    """Run the joint stage on a corpus of `n_documents`, in this process; returns its measurements."""
    import torch

    from bench.retrieval_scoring import build
    from train.bundled_data.retrieval_vqa import COLOURS, catalogue_fact, catalogue_names, write_retrieval_vqa
    from train.retrieval import joint_stage
    from train.retrieval.task import load_retrieval_task

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as folder:
        write_retrieval_vqa(folder)
        task = load_retrieval_task(Path(folder) / "train.csv", Path(folder) / "corpus.jsonl")
    rng = random.Random(seed)
    names = catalogue_names(rng, 2000)  # x 10 digits x 8 colours: facts repeat past 160 k, as texts do in real corpora
    distractors = [{"text": catalogue_fact(rng.choice(names), rng.randrange(10), rng.choice(list(COLOURS))),
                    "image": None} for _ in range(n_documents - len(task.corpus))]
    task.corpus.extend(distractors)
    questions = task.subset(range(steps * 8))
    model, processor = build({}, task)
    relevance = [example.gold_document_ids for example in questions.examples]

    snapshot_times = []
    original = joint_stage.CorpusSnapshot

    def timed_snapshot(*args, **kwargs):
        started = time.perf_counter()
        snapshot = original(*args, **kwargs)
        snapshot_times.append(time.perf_counter() - started)
        memory.start = memory.peak = memory.process.memory_info().rss  # the steps' memory is counted from here
        return snapshot

    joint_stage.CorpusSnapshot = timed_snapshot
    with PeakMemory() as memory:
        started = time.perf_counter()
        joint_stage.train_joint_epoch(model, processor, questions, relevance, batch_size=8, log_every=10**6)
        total = time.perf_counter() - started
    joint_stage.CorpusSnapshot = original
    snapshot = snapshot_times[0]
    return {"documents": len(task.corpus), "steps": steps, "snapshot_seconds": round(snapshot, 2),
            "snapshot_ms_per_document": round(1000 * snapshot / len(task.corpus), 4),
            "seconds_per_step": round((total - snapshot) / steps, 4), "step_memory_added_mb": round(memory.added_mb, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="Corpus sizes, in documents.")
    parser.add_argument("--steps", type=int, default=20, help="Joint training steps (8 questions each) per size.")
    parser.add_argument("--one_size", type=int, help=argparse.SUPPRESS)  # the child process's run
    args = parser.parse_args()
    if args.one_size:
        print(json.dumps(one_size(args.one_size, args.steps)))
        return
    rows = []
    for size in args.sizes:
        result = subprocess.run([sys.executable, "-m", "bench.joint_scaling", "--one_size", str(size), "--steps",
                                 str(args.steps)], capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    smallest, largest = rows[0], rows[-1]
    ratios = {"seconds_per_step": round(largest["seconds_per_step"] / smallest["seconds_per_step"], 3),
              "step_memory_added_mb": round(max(largest["step_memory_added_mb"], 1.0)
                                            / max(smallest["step_memory_added_mb"], 1.0), 3)}
    report = {"machine": machine(), "command": " ".join(["python -m bench.joint_scaling", *sys.argv[1:]]),
              "rows": rows, "largest_over_smallest": ratios,
              "within_target": all(ratio <= TARGET_RATIO for ratio in ratios.values())}
    print(json.dumps(report, indent=2))
    if args.sizes == list(SIZES):
        report["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        Path(RESULTS).write_text(json.dumps(report, indent=2))
        from bench.report import write_report

        with open("bench/results/full.json") as handle:
            write_report(json.load(handle), "BENCHMARKS.md", plot_dir="docs")
    print("\n".join(render_section(report)))


def render_section(results: dict) -> list[str]:
    """BENCHMARKS.md's section for a stored run."""
    lines = ["## 15. Joint training against corpus size (the bundled task padded with distractors)", "",
             f"`{results['command']}`, {results.get('date', '')}, {results['machine']['cores']} cores, "
             f"{results['machine']['threads']} torch thread(s). Tiny random-weight parts, 8 questions per step; the "
             "corpus snapshot (re-embedding and indexing every document, once per epoch) is reported apart.", "",
             "| documents | snapshot (s) | snapshot per document (ms) | step (s) | memory the steps add (MB) |",
             "|---|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(f"| {row['documents']:,} | {row['snapshot_seconds']} | {row['snapshot_ms_per_document']} | "
                     f"{row['seconds_per_step']} | {row['step_memory_added_mb']} |")
    ratios = results["largest_over_smallest"]
    lines += ["", f"Largest over smallest corpus: step time {ratios['seconds_per_step']}x, memory the steps add "
              f"{ratios['step_memory_added_mb']}x (target ≤ {TARGET_RATIO}x each: "
              f"{'met' if results['within_target'] else 'missed'}).", ""]
    return lines


if __name__ == "__main__":
    main()
