"""Processor throughput: SigPhi's processor vs LlavaProcessor around the same image processor and tokenizer."""

import statistics

import numpy as np
from PIL import Image
from transformers import LlavaProcessor, SiglipImageProcessor, SiglipImageProcessorPil

from bench.measure import seconds, torch_threads
from processing import SigPhiProcessor
from train.common.tokenizer import build_byte_level_tokenizer

PROMPT = "<|user|>\n<image>What digit is shown in this image?<|end|>\n<|assistant|>\n"


def _processors(image_processor_class, size: int, patch: int) -> dict:
    tokenizer = build_byte_level_tokenizer()
    image_processor = image_processor_class(size={"height": size, "width": size})
    tokens = (size // patch) ** 2
    return {"sigphi": SigPhiProcessor(image_processor, tokenizer, image_seq_length=tokens),
            "llava": LlavaProcessor(image_processor, tokenizer, patch_size=patch,
                                    vision_feature_select_strategy="full")}


def run(batch_sizes: tuple[int, ...], repeats: int, size: int = 224, patch: int = 16,
        images_per_sample: int = 64) -> dict:
    """images/s per batch size for both processors, with the fast (torchvision) and slow (PIL) image processor.

    One call at batch 1 takes about a millisecond, so each timing sample is a loop of calls covering
    `images_per_sample` images, and the two processors alternate sample by sample (median of `repeats`), so
    neither is favoured by running first or by a burst of load from another process."""
    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 255, (256, 320, 3), dtype=np.uint8)) for _ in range(max(batch_sizes))]
    results: dict = {"torch_threads": 1}
    with torch_threads(1):  # as in a DataLoader worker; with 2 threads each call's tiny ops wait on each other
        _measure(results, images, batch_sizes, repeats, size, patch, images_per_sample)
    results["ratio_sigphi_over_llava"] = {
        backend: {n: results[backend]["sigphi"][n] / results[backend]["llava"][n] for n in batch_sizes}
        for backend in ("fast", "slow")}
    return results


def _measure(results: dict, images: list, batch_sizes: tuple[int, ...], repeats: int, size: int, patch: int,
             images_per_sample: int) -> None:
    for backend, image_processor_class in (("fast", SiglipImageProcessor), ("slow", SiglipImageProcessorPil)):
        processors = _processors(image_processor_class, size, patch)
        for n in batch_sizes:
            calls = max(1, images_per_sample // n)

            def loop(processor):
                for _ in range(calls):
                    processor(text=[PROMPT] * n, images=[[im] for im in images[:n]], return_tensors="pt")

            samples: dict[str, list[float]] = {name: [] for name in processors}
            for name, processor in processors.items():
                loop(processor)  # warm-up
            for _ in range(repeats):
                for name, processor in processors.items():
                    samples[name].append(seconds(lambda: loop(processor)))
            for name in processors:
                results.setdefault(backend, {}).setdefault(name, {})[n] = n * calls / statistics.median(samples[name])
