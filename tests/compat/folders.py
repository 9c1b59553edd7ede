"""Small saved folders, and the outputs they must reproduce, for the compatibility matrix and the time capsule.

A *case* is a folder holding `model/` (what `save_pretrained` wrote, code files included), `probe.png` and
`probe.json` (the input a Hub user's process feeds it) and `expected.safetensors` (what this code computed from
that input: token ids, logits, greedy generation, the loss with labels, or a retriever-generator's choice
scores). `tests/compat/hub_checks.py` loads a case where this project is not installed and compares.

    python -m tests.compat.folders OUTPUT_DIR         # fresh cases, built by the code as it is now
    python -m tests.compat.folders tests/fixtures/golden/$(date +%F)   # a new golden set (commit it)

Golden sets under `tests/fixtures/golden/` are never rewritten: every later version of the project, on every
supported transformers, must keep loading them and reproduce their outputs (atol 1e-4). The models are narrowed
(a 32-wide decoder and tower) so that a golden set stays well under 3 MB; the code paths are the tiny preset's.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import SiglipTextConfig

from configuration import MultimodalRetrieverConfig, RetrieverGeneratorConfig
from modeling import MultimodalRetrieverModel, RetrieverGeneratorForMultipleChoice
from processing import MultimodalRetrieverProcessor, RetrieverGeneratorProcessor
from train.common.tokenizer import build_byte_level_tokenizer
from train.sigphi.tiny import build_tiny_sigphi

QUESTION = "What digit is shown in this image?"
ANSWER = "7"
CHOICES = ["red", "green", "blue", "black"]
NARROW_VISION = {"embed_dim": 32, "depth": 1, "num_heads": 2}
NARROW_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
               "num_key_value_heads": 2}
GENERATE_KWARGS = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
DOCUMENTS = [{"text": f"In the Kalomi catalogue the digit {digit} is {colour}.", "image": None}
             for digit, colour in enumerate(CHOICES * 2)]


def probe_image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (37, 53, 3), dtype=np.uint8))


def narrow_sigphi(seed: int = 0):
    """The tiny preset's SigPhi with a 32-wide tower and decoder (≈ 50 k parameters)."""
    model, processor = build_tiny_sigphi(seed, vision_kwargs=NARROW_VISION, text_kwargs=NARROW_TEXT)
    return model.eval(), processor


def chat_prompt(processor, answer: str | None = None) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return processor.apply_chat_template(messages, add_generation_prompt=answer is None)


def write_probe(case: Path, probe: dict) -> Image.Image:
    image = probe_image()
    image.save(case / "probe.png")
    (case / "probe.json").write_text(json.dumps(probe, indent=1))
    return image


@torch.no_grad()
def write_sigphi_case(case: Path) -> None:
    """A narrow SigPhi folder with its logits, greedy generation and training loss on the probe."""
    model, processor = narrow_sigphi()
    model.save_pretrained(case / "model")
    processor.save_pretrained(case / "model")
    image = write_probe(case, {"question": QUESTION, "answer": ANSWER, "generate_kwargs": GENERATE_KWARGS})
    inputs = processor(text=[chat_prompt(processor)], images=[[image]], return_tensors="pt")
    train_inputs = processor(text=[chat_prompt(processor, ANSWER)], images=[[image]], return_tensors="pt")
    outputs = {
        "input_ids": inputs["input_ids"],
        "logits": model(**inputs).logits,
        "generated": model.generate(**inputs, **GENERATE_KWARGS),
        "train_input_ids": train_inputs["input_ids"],
        "loss": model(**train_inputs, labels=train_inputs["input_ids"]).loss.reshape(1),
    }
    save_file({name: tensor.contiguous() for name, tensor in outputs.items()}, case / "expected.safetensors")


def narrow_retriever(seed: int = 0):
    """A from-scratch retriever as the tiny preset builds it, narrowed (≈ 40 k parameters)."""
    tokenizer = build_byte_level_tokenizer([document["text"] for document in DOCUMENTS] + [QUESTION],
                                           image_token=None)
    torch.manual_seed(seed)
    config = MultimodalRetrieverConfig(
        text_config=SiglipTextConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                     bos_token_id=None, eos_token_id=tokenizer.eos_token_id, hidden_size=32,
                                     intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     max_position_embeddings=64),
        image_model_name="resnet18",
        image_model_kwargs={"layers": [1, 1, 1, 1], "channels": [8, 8, 16, 16], "stem_width": 8},
        image_size=16, projection_dim=32, text_pooling="mean")
    processor = MultimodalRetrieverProcessor.from_retriever_config(tokenizer, config)
    return MultimodalRetrieverModel(config).eval(), processor


@torch.no_grad()
def write_retriever_generator_case(case: Path) -> None:
    """A narrow retriever-generator with an indexed corpus, and its answer to the probe's multiple-choice question."""
    retriever, retriever_processor = narrow_retriever()
    retriever.build_document_index(DOCUMENTS, retriever_processor)
    generator, generator_processor = narrow_sigphi(seed=1)
    config = RetrieverGeneratorConfig.from_retriever_generator_configs(retriever.config, generator.config)
    model = RetrieverGeneratorForMultipleChoice(config, retriever=retriever, generator=generator).eval()
    processor = RetrieverGeneratorProcessor(retriever_processor, generator_processor)
    model.save_pretrained(case / "model")
    processor.save_pretrained(case / "model")
    image = write_probe(case, {"question": QUESTION, "answer_choices": CHOICES})
    prediction = model.predict(processor, QUESTION, image, CHOICES)
    save_file({"choice_scores": prediction.choice_scores.float().contiguous(),
               "label": torch.tensor([prediction.label])}, case / "expected.safetensors")


CASES = {"sigphi": write_sigphi_case, "retriever_generator": write_retriever_generator_case}


def write_cases(output_dir: str | Path) -> list[Path]:
    """Every case under `output_dir` (one sub-folder each); returns their paths."""
    paths = []
    for name, write in CASES.items():
        case = Path(output_dir) / name
        case.mkdir(parents=True, exist_ok=True)
        write(case)
        paths.append(case)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.compat.folders OUTPUT_DIR")
    for path in write_cases(sys.argv[1]):
        print(path)
