"""The tiny random-weight SigPhi: tests, the quickstart, the contract checks and the retriever-generator's tiny
generator build it (`python -m train.build_model --preset tiny` saves one).

A timm SigLIP ViT of width 64, a Phi-3 of width 128 and a byte-level tokenizer trained locally: no download.
"""

import timm
import torch
from transformers import Phi3Config

from configuration import SigPhiConfig, reduced_image_seq_length
from modeling import SigPhiForConditionalGeneration
from modeling.modeling_sigphi import describe_timm_tower
from processing import IMAGE_TOKEN, SigPhiProcessor
from train.common.tokenizer import PAD_TOKEN, build_byte_level_tokenizer

TINY_VISION_MODEL = "vit_base_patch16_siglip_224"
TINY_VISION_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4, "global_pool": ""}
TINY_TEXT_KWARGS = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 4, "max_position_embeddings": 1024,
                    "original_max_position_embeddings": 1024}


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
