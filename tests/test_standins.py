"""The tiny preset's stand-in generator behaves like a downloaded checkpoint: the same weights wherever it is built."""

import torch

from train.retrieval.standins import STANDIN_TORCH_THREADS, standin_generator


def _build_on(threads: int) -> dict[str, torch.Tensor]:
    torch.set_num_threads(threads)
    generator, _ = standin_generator(seed=0, reader_epochs=0.02, vision_epochs=1, cache=False)
    assert torch.get_num_threads() == threads  # the caller's threads are given back
    return generator.state_dict()


def test_the_standin_generator_is_the_same_whatever_threads_the_caller_runs_on():
    callers_threads = torch.get_num_threads()
    try:
        one_thread, more_threads = _build_on(1), _build_on(STANDIN_TORCH_THREADS + 1)
    finally:
        torch.set_num_threads(callers_threads)
    assert one_thread.keys() == more_threads.keys()
    for name, weight in one_thread.items():
        assert torch.equal(weight, more_threads[name]), name
