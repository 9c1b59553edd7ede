"""FAISS index scaling: build time, single-query latency (p50/p99, top-10) and recall@10 against exact search.

Two kinds of data of dimension 256: a Gaussian mixture on the unit sphere (clustered, like real
embeddings) and uniform random unit vectors (no structure: the worst case for IVF and HNSW). Index
parameters are swept and the cheapest setting reaching recall@10 ≥ 0.95 is reported beside the sweep.
"""

import time

import numpy as np

TARGET_RECALL = 0.95


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def make_data(kind: str, n: int, dim: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(documents, queries); clustered queries are fresh draws from the same mixture, not copies of documents."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return unit(rng.standard_normal((n, dim))), unit(rng.standard_normal((n_queries, dim)))
    centres = unit(rng.standard_normal((max(n // 1000, 10), dim)))
    def draw(count):
        return unit(centres[rng.integers(0, len(centres), count)] + 0.05 * rng.standard_normal((count, dim)))
    return draw(n), draw(n_queries)


def _latencies(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[float]]:
    found, seconds = [], []
    for query in queries:
        start = time.perf_counter()
        _, ids = index.search(query[None], k)
        seconds.append(time.perf_counter() - start)
        found.append(ids[0])
    return np.stack(found), seconds


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def _row(name: str, build_seconds: float, found, seconds, truth) -> dict:
    return {"index": name, "build_s": build_seconds, "p50_ms": 1000 * float(np.percentile(seconds, 50)),
            "p99_ms": 1000 * float(np.percentile(seconds, 99)), "recall_at_10": _recall(found, truth)}


def benchmark(kind: str, n: int, dim: int = 256, n_queries: int = 200, k: int = 10) -> list[dict]:
    import faiss

    documents, queries = make_data(kind, n, dim, n_queries)
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(documents)
    flat_build = time.perf_counter() - start
    truth, seconds = _latencies(flat, queries, k)
    rows = [_row("flat", flat_build, truth, seconds, truth)]

    n_lists = int(np.sqrt(n))  # FAISS's rule of thumb; trained on 50 points per list
    start = time.perf_counter()
    ivf = faiss.index_factory(dim, f"IVF{n_lists},Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(documents[np.random.default_rng(1).choice(n, min(n, 50 * n_lists), replace=False)])
    ivf.add(documents)
    ivf_build = time.perf_counter() - start
    for n_probe in (1, 4, 16, 64, 256, 512):
        if n_probe > n_lists:
            break
        ivf.nprobe = n_probe
        rows.append(_row(f"IVF{n_lists} nprobe={n_probe}", ivf_build, *_latencies(ivf, queries, k), truth))

    start = time.perf_counter()
    hnsw = faiss.index_factory(dim, "HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 64
    hnsw.add(documents)
    hnsw_build = time.perf_counter() - start
    for ef in (16, 64, 256, 1024):
        hnsw.hnsw.efSearch = ef
        rows.append(_row(f"HNSW32 efSearch={ef}", hnsw_build, *_latencies(hnsw, queries, k), truth))
    return rows


def cheapest_at_target(rows: list[dict]) -> dict | None:
    """The lowest-p50 approximate setting with recall@10 ≥ 0.95 (None if no setting reaches it)."""
    good = [r for r in rows if r["index"] != "flat" and r["recall_at_10"] >= TARGET_RECALL]
    return min(good, key=lambda r: r["p50_ms"]) if good else None


def run(sizes: tuple[int, ...]) -> dict:
    results = {}
    for kind in ("clustered", "uniform"):
        for n in sizes:
            rows = benchmark(kind, n)
            results[f"{kind} {n}"] = {"rows": rows, "best_at_target": cheapest_at_target(rows)}
            print(f"retrieval {kind} {n}: best {results[f'{kind} {n}']['best_at_target']}", flush=True)
    return results
