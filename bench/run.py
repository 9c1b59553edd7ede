"""Run the benchmarks and regenerate BENCHMARKS.md and the plots in docs/ (never edit those by hand).

    python -m bench.run                 # `make bench`: full sizes (≤ 30 min on 2 cores)
    python -m bench.run --quick         # `make bench-quick`: small sizes (≤ 5 min)
    python -m bench.run --sections processor   # re-measure some sections, keep the others' last results
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch

from bench import generation, processor, quantization, retrieval, retrieval_scoring, token_reduction, train_step
from bench.measure import matmul_flops_per_second
from bench.report import write_report
from train.common.provenance import staleness

SETTINGS = {
    "quick": {"shape": "quick", "train_repeats": 3, "new_tokens": (32, 128), "gen_repeats": 2,
              "batches": (1, 8, 32), "proc_repeats": 3, "retrieval_sizes": (10_000,), "compile": False,
              "scoring_questions": 8, "scoring_repeats": 1},
    "full": {"shape": "full", "train_repeats": 5, "new_tokens": (32, 128, 256), "gen_repeats": 3,
             "batches": (1, 8, 32), "proc_repeats": 5, "retrieval_sizes": (10_000, 100_000, 1_000_000),
             "compile": True, "scoring_questions": 16, "scoring_repeats": 3},
}


def machine() -> dict:
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cores": os.cpu_count(), "cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


SECTIONS = ("matmul_flops_per_second", "train_step", "generation", "processor", "quantization", "retrieval",
            "retrieval_scoring", "token_reduction")


def timed(results: dict, selected: set[str], name: str, fn, *args):
    if name not in selected:
        return
    start = time.perf_counter()
    print(f"== {name} ...", flush=True)
    results[name] = fn(*args)
    results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - start, 1)
    results.setdefault("section_dates", {})[name] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def current_quickstart_metrics(path: str, rerun: bool) -> dict:
    """The quickstart's metrics.json if it was made by the code as it is now; otherwise the quickstart is run again
    (`rerun`) or the section says why it is left out, so BENCHMARKS.md never reports a figure of older code."""
    metrics = None
    if os.path.exists(path):
        with open(path) as handle:
            metrics = json.load(handle)
    reason = staleness(metrics.get("code")) if metrics else f"no {path}"
    if reason and rerun:
        print(f"== quickstart: {reason}; running it again", flush=True)
        subprocess.run([sys.executable, "-m", "train.quickstart", "--output_dir", os.path.dirname(path)], check=True)
        with open(path) as handle:
            metrics = json.load(handle)
        reason = staleness(metrics.get("code"))
    return {"left_out": reason} if reason else metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    parser.add_argument("--output", default="BENCHMARKS.md")
    parser.add_argument("--quickstart_metrics", default="outputs/quickstart/metrics.json")
    parser.add_argument("--no_quickstart_rerun", action="store_true",
                        help="leave the quickstart section out instead of re-running a quickstart older than the code")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="re-measure only these; the others keep their results from the last run of this mode")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    settings = SETTINGS[mode]
    command = "make bench-quick" if args.quick else "make bench"
    results_path = f"bench/results/{mode}.json"
    results: dict = {}
    if set(args.sections) != set(SECTIONS) and os.path.exists(results_path):
        with open(results_path) as handle:
            results = json.load(handle)
    results.update({"mode": mode, "command": command, "machine": machine(), "argv": sys.argv})
    results.setdefault("date", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    selected = set(args.sections)

    timed(results, selected, "matmul_flops_per_second", matmul_flops_per_second)
    timed(results, selected, "train_step", train_step.run, settings["shape"], settings["train_repeats"])
    timed(results, selected, "generation", generation.run, settings["shape"], settings["new_tokens"],
          settings["gen_repeats"], settings["compile"])
    timed(results, selected, "processor", processor.run, settings["batches"], settings["proc_repeats"])
    with tempfile.TemporaryDirectory() as folder:
        timed(results, selected, "quantization", quantization.run, settings["shape"], folder)
    timed(results, selected, "retrieval", retrieval.run, settings["retrieval_sizes"])
    timed(results, selected, "retrieval_scoring", retrieval_scoring.run, settings["scoring_questions"],
          settings["scoring_repeats"])
    timed(results, selected, "token_reduction", token_reduction.run, args.quick)
    results["quickstart"] = current_quickstart_metrics(args.quickstart_metrics, rerun=not args.no_quickstart_rerun)
    if os.path.exists("bench/gpu_results.json"):
        with open("bench/gpu_results.json") as handle:
            results["gpu"] = json.load(handle)

    os.makedirs("bench/results", exist_ok=True)
    with open(results_path, "w") as handle:
        json.dump(results, handle, indent=2)
    write_report(results, args.output, plot_dir="docs")
    print(f"wrote {args.output} and {results_path}")


if __name__ == "__main__":
    main()
