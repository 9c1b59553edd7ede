"""Quickstart: build a tiny SigPhi offline, save it, reload it as a Hub user would, and ask it about a digit.

    python -m train.quickstart --output_dir outputs/quickstart

The weights are random (training arrives with the training pipeline), so the answer is noise; what this
shows is the whole path: build -> save a self-contained folder -> reload -> chat template -> generate.
"""

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from transformers import AutoModelForImageTextToText, AutoProcessor

from train.build_model import build_tiny_sigphi
from train.cli import run_cli


@dataclass
class QuickstartArguments:
    output_dir: str = field(default="outputs/quickstart", metadata={"help": "Where to write the model."})
    seed: int = field(default=0, metadata={"help": "Seed of the random initialisation."})


def main(args: QuickstartArguments) -> None:
    model_dir = os.path.join(args.output_dir, "sigphi")
    model, processor = build_tiny_sigphi(seed=args.seed)
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)

    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    digits = load_digits()
    image = Image.fromarray(np.round(digits.images[0] * 255 / 16).astype(np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "What digit is shown in this image?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[[image]], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    result = {"model_dir": model_dir, "question": "What digit is shown in this image?",
              "true_digit": int(digits.target[0]), "answer_of_untrained_model": answer}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    run_cli(main, QuickstartArguments)
