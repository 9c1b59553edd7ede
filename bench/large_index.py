"""An index bigger than RAM: an IVF-PQ index built from embeddings on disk, its inverted lists on disk, searched
memory-mapped.

For clustered data (`bench.retrieval`'s mixture on the unit sphere: one centre per 1000 documents, noise 0.05 per
dimension) and uniform unit vectors (the worst case), `n` embeddings are generated chunk by chunk (seeded) into a
`.npy` file, so nothing near their size is ever in memory. A fresh process builds the index the way
`DocumentIndex.build(..., on_disk=...)` does (`modeling.large_index`: training on a random sample, adding chunk by
chunk into per-chunk shards, merging them into one `.ivfdata` file) and reports its times and peak resident memory.
Another fresh process opens the index memory-mapped and times single queries at several `nprobe`; its resident
memory is reported split into anonymous memory (what the process needs) and file-backed pages (the probed lists,
which the kernel may drop). Recall@10 is against exact top-10s computed by streaming over the embeddings file.

`python -m bench.large_index --n 10000000` (the BENCHMARKS.md section 14 run); `--quick` is a < 1 min smoke run.
"""

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _load_large_index():
    """modeling/large_index.py by its path: as `modeling.large_index` it would import the `modeling` package (torch,
    transformers: ~0.5 GB resident), which would swamp the memory measured. It needs only numpy and faiss."""
    spec = importlib.util.spec_from_file_location(
        "large_index", Path(__file__).resolve().parents[1] / "modeling" / "large_index.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


large_index = _load_large_index()
RESULTS = "bench/results/large_index.json"
SECTION_TITLE = "## 14. An index bigger than RAM"
GENERATION_CHUNK = 250_000


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def write_data(kind: str, n: int, dim: int, n_queries: int, path: Path, seed: int = 0) -> np.ndarray:
    """Write `n` documents of `kind` to the `.npy` file `path` in chunks and return fresh queries from the same
    distribution (`bench.retrieval.make_data`'s mixture, drawn chunk by chunk)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((max(n // 1000, 10), dim)))

    def draw(count: int) -> np.ndarray:
        if kind == "uniform":
            return unit(rng.standard_normal((count, dim)))
        return unit(centres[rng.integers(0, len(centres), count)] + 0.05 * rng.standard_normal((count, dim)))

    writer = large_index.EmbeddingWriter(path, dim)
    for start in range(0, n, GENERATION_CHUNK):
        writer.write(draw(min(GENERATION_CHUNK, n - start)))
    writer.close()
    return draw(n_queries)


def exact_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int = 10, chunk_size: int = 250_000) -> np.ndarray:
    """Exact inner-product top-k ids, one pass over the embeddings file in chunks."""
    best_scores = np.full((len(queries), k), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), k), np.int64)
    for start, rows in large_index.iter_chunks(embeddings, chunk_size):
        scores = np.concatenate([best_scores, queries @ rows.T], axis=1)
        ids = np.concatenate([best_ids, np.broadcast_to(np.arange(start, start + len(rows)), scores[:, k:].shape)],
                             axis=1)
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
    return best_ids


def memory() -> dict:
    """This process's peak and current resident memory (MB), current split into anonymous and file-backed.

    The peak is /proc's VmHWM, which `exec` resets, not `getrusage`'s ru_maxrss, which a child started by `fork`
    inherits from its parent."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    mb = {key: round(int(status[key].split()[0]) / 1024, 1) for key in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}
    return {"peak_rss_mb": mb["VmHWM"], "rss_mb": mb["VmRSS"], "rss_anon_mb": mb["RssAnon"],
            "rss_file_mb": mb["RssFile"]}


def build_stage(folder: Path, factory: str, train_size: int, chunk_size: int) -> dict:
    """In a fresh process: train on a sample of `folder/embeddings.npy`, add it chunk by chunk to on-disk lists."""
    import faiss

    embeddings = np.load(folder / "embeddings.npy", mmap_mode="r")
    before = memory()
    index = faiss.index_factory(embeddings.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    start = time.perf_counter()
    sample = large_index.training_sample(embeddings, train_size)
    read_seconds = time.perf_counter() - start
    index.train(sample)
    train_seconds = time.perf_counter() - start
    del sample
    start = time.perf_counter()
    large_index.fill_on_disk(index, embeddings, folder / "documents.ivfdata", chunk_size)
    large_index.write_on_disk_index(index, folder / "documents.faiss", folder / "documents.ivfdata")
    return {"sample_read_s": round(read_seconds, 1), "train_s": round(train_seconds, 1),
            "add_and_merge_s": round(time.perf_counter() - start, 1), "before": before, **memory()}


def query_stage(folder: Path, nprobes: list[int], k: int = 10) -> dict:
    """In a fresh process: open the index memory-mapped and time single queries at each `nprobe`."""
    before = memory()
    start = time.perf_counter()
    index = large_index.read_index(str(folder / "documents.faiss"), on_disk=True)
    result = {"open_s": round(time.perf_counter() - start, 3), "before_open": before, "after_open": memory(),
              "nprobe": {}}
    queries = np.load(folder / "queries.npy")
    for nprobe in nprobes:
        index.nprobe = nprobe
        found, seconds = [], []
        for query in queries:
            start = time.perf_counter()
            found.append(index.search(query[None], k)[1][0])
            seconds.append(time.perf_counter() - start)
        np.save(folder / f"found_{nprobe}.npy", np.stack(found))
        result["nprobe"][nprobe] = {"p50_ms": round(1000 * float(np.percentile(seconds, 50)), 3),
                                    "p99_ms": round(1000 * float(np.percentile(seconds, 99)), 3), **memory()}
    return result


def in_fresh_process(stage: str, folder: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "bench.large_index", "--stage", stage, "--workdir", str(folder),
               "--factory", args.factory, "--index_train_size", str(args.index_train_size),
               "--chunk_size", str(args.chunk_size), "--threads", str(args.threads),
               "--nprobe", *map(str, args.nprobe)]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    return json.loads((folder / f"{stage}.json").read_text())


def benchmark(kind: str, args: argparse.Namespace) -> dict:
    folder = Path(args.workdir) / kind
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    queries = write_data(kind, args.n, args.dim, args.queries, folder / "embeddings.npy")
    np.save(folder / "queries.npy", queries)
    result = {"generate_s": round(time.perf_counter() - start, 1)}
    result["build"] = in_fresh_process("build", folder, args)
    result["index_mb"] = round((folder / "documents.faiss").stat().st_size / 2**20, 1)
    result["ivfdata_mb"] = round((folder / "documents.ivfdata").stat().st_size / 2**20, 1)
    result["embeddings_mb"] = round((folder / "embeddings.npy").stat().st_size / 2**20, 1)
    start = time.perf_counter()
    truth = exact_top_k(np.load(folder / "embeddings.npy", mmap_mode="r"), queries)
    result["exact_s"] = round(time.perf_counter() - start, 1)
    result["query"] = in_fresh_process("query", folder, args)
    for nprobe, row in result["query"]["nprobe"].items():
        found = np.load(folder / f"found_{nprobe}.npy")
        row["recall_at_10"] = round(float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])), 3)
    if not args.keep:
        shutil.rmtree(folder)
    print(f"large_index {kind} {args.n}: {json.dumps(result)}", flush=True)
    return result


def render_section(results: dict) -> list[str]:
    """BENCHMARKS.md's section from a results JSON."""
    lines = [SECTION_TITLE, "", f"`{results['command']}`, {results['date']}; {results['machine']}.", "",
             "| data | documents | build: sample + train (s) | build: add + merge (s) | build peak RSS (MB) | "
             "index + ivfdata on disk (MB) | embeddings file (MB) |", "|---|---|---|---|---|---|---|"]
    for kind, run in results["runs"].items():
        build = run["build"]
        lines.append(f"| {kind} | {run['n']:,} | {build['train_s']} | {build['add_and_merge_s']} | "
                     f"{build['peak_rss_mb']:,} | {run['index_mb']:,} + {run['ivfdata_mb']:,} | "
                     f"{run['embeddings_mb']:,} |")
    lines += ["", "Searching, in a fresh process that opened the index memory-mapped (single queries, top-10; RSS "
              "after the queries at that nprobe, anonymous + file-backed):", "",
              "| data | nprobe | p50 (ms) | p99 (ms) | recall@10 | RSS anon (MB) | RSS file-backed (MB) |",
              "|---|---|---|---|---|---|---|"]
    for kind, run in results["runs"].items():
        before, opened = run["query"]["before_open"], run["query"]["after_open"]
        lines.append(f"| {kind} | (python + numpy + faiss, before opening) | | | | {before['rss_anon_mb']:,} | "
                     f"{before['rss_file_mb']:,} |")
        lines.append(f"| {kind} | (opened, {run['query']['open_s']} s) | | | | {opened['rss_anon_mb']:,} | "
                     f"{opened['rss_file_mb']:,} |")
        for nprobe, row in run["query"]["nprobe"].items():
            lines.append(f"| {kind} | {nprobe} | {row['p50_ms']} | {row['p99_ms']} | {row['recall_at_10']} | "
                         f"{row['rss_anon_mb']:,} | {row['rss_file_mb']:,} |")
    return lines + ["", "Build peak RSS is the building process's high-water mark (one chunk of embeddings, the "
                    "training sample, the shards being merged). A searching process's file-backed pages are the "
                    "libraries' code plus the probed lists mapped from `documents.ivfdata`: clean page cache the "
                    "kernel drops under pressure, so what the process needs is the anonymous part. Recall@10 is "
                    "what the PQ codes allow: once nprobe reaches the true neighbours' lists it stops rising, and "
                    "more would take re-ranking with the full vectors (read from the embeddings file) or larger "
                    "codes.", "", *(f"- {note}" for note in results.get("notes", [])), ""]


def write_section(results: dict, path: str = "BENCHMARKS.md") -> None:
    """Replace (or append) this section of BENCHMARKS.md, the last one, leaving the others as they are."""
    text = Path(path).read_text(encoding="utf-8")
    text = text.split(SECTION_TITLE)[0].rstrip("\n") + "\n\n"
    Path(path).write_text(text + "\n".join(render_section(results)), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="documents (default 1 M; section 14: 10 M)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--kinds", nargs="+", default=["clustered", "uniform"], choices=["clustered", "uniform"])
    parser.add_argument("--uniform_n", type=int, help="documents of the uniform run, when fewer than --n")
    parser.add_argument("--factory", default="IVF4096,PQ64np",
                        help="FAISS factory; `np`: no polysemous training, which takes minutes at PQ64 and does "
                             "not change ADC search")
    parser.add_argument("--index_train_size", type=int, default=40 * 4096,
                        help="training sample (default 40 per list: over FAISS's 39-per-centroid warning; its "
                             "k-means reads at most 256 per list)")
    parser.add_argument("--chunk_size", type=int, default=100_000, help="rows added at a time")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--threads", type=int, default=1, help="FAISS/BLAS threads")
    parser.add_argument("--workdir", default="/tmp/large_index_bench", help="where the data and index go")
    parser.add_argument("--keep", action="store_true", help="keep the data and index (default: deleted)")
    parser.add_argument("--quick", action="store_true",
                        help="a < 1 min smoke run (50 k x 64, IVF256,PQ16np); results go to the workdir")
    parser.add_argument("--note", action="append", default=[], help="a line for BENCHMARKS.md (machine state)")
    parser.add_argument("--stage", choices=["build", "query"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    if args.stage:
        folder = Path(args.workdir)
        result = (build_stage(folder, args.factory, args.index_train_size, args.chunk_size) if args.stage == "build"
                  else query_stage(folder, args.nprobe))
        (folder / f"{args.stage}.json").write_text(json.dumps(result))
        return
    if args.quick:
        args.n, args.dim, args.factory, args.index_train_size, args.nprobe = 50_000, 64, "IVF256,PQ16np", 10_240, \
            [8, 32]
    results = {"command": shlex.join(["python", "-m", "bench.large_index", *sys.argv[1:]]),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": f"{os.cpu_count()} cores, {args.threads} FAISS thread(s), faiss {faiss.__version__}",
               "factory": args.factory, "index_train_size": args.index_train_size, "notes": args.note, "runs": {}}
    n = args.n
    for kind in args.kinds:
        args.n = args.uniform_n if kind == "uniform" and args.uniform_n else n
        results["runs"][kind] = {"n": args.n, **benchmark(kind, args)}
    path = Path(args.workdir) / "large_index_quick.json" if args.quick else Path(RESULTS)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    if not args.quick:
        write_section(results)
    print("\n".join(render_section(results)))


if __name__ == "__main__":
    main()
