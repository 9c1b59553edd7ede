"""Build a SigPhi model + processor folder: a random-weight tiny one, or one from real pretrained parts.

    python -m train.build_model --preset tiny --output_dir outputs/tiny
    python -m train.build_model --vision_model vit_so400m_patch14_siglip_384.webli \\
        --text_model microsoft/Phi-3-mini-4k-instruct --output_dir outputs/sigphi-base

The tiny preset (timm SigLIP ViT of width 64, Phi-3 of width 128, a byte-level tokenizer trained locally)
needs no download; it is what tests, the quickstart and the contract checks use (`train.sigphi.tiny`).
"""

import json
import os
from dataclasses import dataclass, field

import torch

from modeling import SigPhiForConditionalGeneration
from train.common.cli import InvalidInput, run_cli
from train.sigphi.tiny import build_tiny_sigphi


@dataclass
class BuildModelArguments:
    output_dir: str = field(metadata={"help": "Folder to write the model and processor to."})
    preset: str | None = field(default=None, metadata={"help": "'tiny': random weights, built offline.",
                                                        "choices": ["tiny"]})
    vision_model: str | None = field(default=None, metadata={"help": "timm model name with pretrained weights."})
    text_model: str | None = field(default=None, metadata={"help": "Hub id or folder of a Phi-3 checkpoint."})
    vision_kwargs: str | None = field(default=None, metadata={
        "help": "JSON object of extra timm.create_model arguments, e.g. '{\"img_size\": 448}'."})
    vision_weights: str | None = field(default=None, metadata={
        "help": "Local file with the timm weights (instead of downloading them)."})
    vision_feature_layer: int = field(default=-1, metadata={"help": "Vision block feeding the projector."})
    image_token_reduction: int = field(default=1, metadata={
        "help": "Pixel-shuffle factor r of the projector: r*r neighbouring patches become one image token "
                "(1: one token per patch; 2: 729 -> 196 tokens for SigLIP-384/14)."})
    dtype: str = field(default="float32", metadata={"help": "Weights dtype for real parts.",
                                                    "choices": ["float32", "bfloat16", "float16"]})
    seed: int = field(default=0, metadata={"help": "Seed of the random initialisation."})


def parse_vision_kwargs(args: BuildModelArguments) -> dict:
    try:
        kwargs = json.loads(args.vision_kwargs) if args.vision_kwargs else {}
    except json.JSONDecodeError as error:
        raise InvalidInput(f"--vision_kwargs is not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(kwargs, dict):
        raise InvalidInput("--vision_kwargs must be a JSON object, e.g. '{\"img_size\": 448}'")
    if args.vision_weights:
        if not os.path.isfile(args.vision_weights):
            raise InvalidInput(f"--vision_weights: no such file {args.vision_weights}")
        kwargs["pretrained_cfg_overlay"] = {"file": os.path.abspath(args.vision_weights)}
    return kwargs


def main(args: BuildModelArguments) -> None:
    if args.image_token_reduction < 1:
        raise InvalidInput(f"--image_token_reduction must be 1 or more, got {args.image_token_reduction}")
    if args.preset == "tiny":
        model, processor = build_tiny_sigphi(args.seed, args.vision_feature_layer,
                                             vision_kwargs=parse_vision_kwargs(args),
                                             image_token_reduction=args.image_token_reduction)
    elif args.vision_model and args.text_model:
        model, processor = SigPhiForConditionalGeneration.from_pretrained_components(
            vision_model=args.vision_model, text_model=args.text_model, vision_kwargs=parse_vision_kwargs(args),
            vision_feature_layer=args.vision_feature_layer, dtype=getattr(torch, args.dtype),
            image_token_reduction=args.image_token_reduction)
    else:
        raise InvalidInput("give --preset tiny, or both --vision_model and --text_model")
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"saved SigPhi ({n_params / 1e6:.2f} M parameters) and its processor to {args.output_dir}")


if __name__ == "__main__":
    run_cli(main, BuildModelArguments)
