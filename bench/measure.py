"""Measurement helpers: timings as medians over repeats, peak memory per run in a fresh process, a block run at a
chosen number of torch threads."""

import contextlib
import multiprocessing
import resource
import statistics
import time
from collections.abc import Callable


def seconds(fn: Callable[[], object]) -> float:
    """Wall time of one call of `fn()`."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with `n` torch threads, then give back the count it had."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(seconds(fn) for _ in range(repeats))


def _child(queue, fn, args):
    result = fn(*args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


def run_isolated(fn: Callable[..., dict], *args) -> dict:
    """Run `fn(*args)` in a fresh spawned process so its peak RSS is its own; returns its dict + peak_rss_mb."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, fn, args))
    process.start()
    result = queue.get()
    process.join()
    return result


def matmul_flops_per_second(size: int = 1024, repeats: int = 10) -> float:
    """The machine's fp32 matmul throughput, the ceiling training FLOP/s is compared with."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = median_seconds(lambda: a @ b, repeats, warmup=3)
    return 2 * size ** 3 / seconds
