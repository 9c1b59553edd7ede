"""Processor throughput: SigPhi's processor vs LlavaProcessor around the same image processor and tokenizer."""

import numpy as np
from PIL import Image
from transformers import LlavaProcessor, SiglipImageProcessor, SiglipImageProcessorPil

from bench.measure import median_seconds
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


def run(batch_sizes: tuple[int, ...], repeats: int, size: int = 224, patch: int = 16) -> dict:
    """images/s per batch size for both processors, with the fast (torchvision) and slow (PIL) image processor."""
    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 255, (256, 320, 3), dtype=np.uint8)) for _ in range(max(batch_sizes))]
    results: dict = {}
    for backend, image_processor_class in (("fast", SiglipImageProcessor), ("slow", SiglipImageProcessorPil)):
        processors = _processors(image_processor_class, size, patch)
        for n in batch_sizes:
            for name, processor in processors.items():
                seconds = median_seconds(lambda: processor(text=[PROMPT] * n, images=[[im] for im in images[:n]],
                                                           return_tensors="pt"), repeats)
                results.setdefault(backend, {}).setdefault(name, {})[n] = n / seconds
    results["ratio_sigphi_over_llava"] = {
        backend: {n: results[backend]["sigphi"][n] / results[backend]["llava"][n] for n in batch_sizes}
        for backend in ("fast", "slow")}
    return results
