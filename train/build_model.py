"""Build a SigPhi model + processor folder: a random-weight tiny one, or one from real pretrained parts.

    python -m train.build_model --preset tiny --output_dir outputs/tiny
    python -m train.build_model --vision_model vit_so400m_patch14_siglip_384.webli \\
        --text_model microsoft/Phi-3-mini-4k-instruct --output_dir outputs/sigphi-base

The tiny preset (timm SigLIP ViT of width 64, Phi-3 of width 128, a byte-level tokenizer trained locally)
needs no download; it is what tests, the quickstart and the contract checks use.
"""

import json
import os
from dataclasses import dataclass, field

import timm
import torch
from transformers import Phi3Config

from configuration import SigPhiConfig, reduced_image_seq_length
from modeling import SigPhiForConditionalGeneration
from modeling.modeling_sigphi import describe_timm_tower
from processing import IMAGE_TOKEN, SigPhiProcessor
from train.cli import InvalidInput, run_cli
from train.tokenizer import PAD_TOKEN, build_byte_level_tokenizer

TINY_VISION_MODEL = "vit_base_patch16_siglip_224"
TINY_VISION_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4, "global_pool": ""}
TINY_TEXT_KWARGS = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 4, "max_position_embeddings": 1024,
                    "original_max_position_embeddings": 1024}


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


def build_tiny_sigphi(seed: int = 0, vision_feature_layer: int = -1, vision_kwargs: dict | None = None,
                      text_kwargs: dict | None = None, image_token_reduction: int = 1
                      ) -> tuple[SigPhiForConditionalGeneration, SigPhiProcessor]:
    """A random-weight SigPhi small enough to train on 2 CPU cores (≈0.6 M parameters).

    `vision_kwargs` / `text_kwargs` override the tiny timm tower's and Phi-3's settings (e.g. `{"img_size": 216}`
    for the real model's 27×27 patch grid, or narrower widths for test fixtures).
    """
    torch.manual_seed(seed)
    tokenizer = build_byte_level_tokenizer()
    vision_kwargs = {**TINY_VISION_KWARGS, **(vision_kwargs or {})}
    tower = timm.create_model(TINY_VISION_MODEL, pretrained=False, num_classes=0, **vision_kwargs)
    vision_config = describe_timm_tower(tower, TINY_VISION_MODEL, vision_kwargs, vision_feature_layer)
    text_config = Phi3Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        **{**TINY_TEXT_KWARGS, **(text_kwargs or {})},
    )
    config = SigPhiConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=reduced_image_seq_length(tower.patch_embed.num_patches, image_token_reduction),
        image_token_reduction=image_token_reduction,
    )
    model = SigPhiForConditionalGeneration(config)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(PAD_TOKEN)]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = SigPhiProcessor.from_vision_config(tokenizer, vision_config, config.image_seq_length)
    return model, processor


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
        model, processor = build_tiny_sigphi(args.seed, args.vision_feature_layer, vision_kwargs=parse_vision_kwargs(args),
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
