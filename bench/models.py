"""The models compared: SigPhi and transformers' Llava built to identical shapes.

Both get a SigLIP-style ViT (timm's for SigPhi, transformers' `SiglipVisionModel` for Llava) of the same
width/depth/heads/patch, the same two-layer GELU projector, and the same `Phi3Config`, so any
difference in speed or memory comes from the implementations, not from the sizes.
"""

from dataclasses import dataclass

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, Phi3Config, SiglipVisionConfig

from configuration import SigPhiConfig, reduced_image_seq_length
from modeling import SigPhiForConditionalGeneration


@dataclass(frozen=True)
class BenchShape:
    name: str
    image_size: int
    patch_size: int
    vision_width: int
    vision_depth: int
    vision_heads: int
    text_width: int
    text_depth: int
    text_heads: int
    text_mlp: int
    vocab_size: int
    batch_size: int
    text_tokens: int

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def sequence_length(self) -> int:
        return self.image_tokens + self.text_tokens


SHAPES = {
    "quick": BenchShape("quick", 64, 16, 128, 2, 4, 256, 2, 4, 768, 4096, 4, 32),
    "full": BenchShape("full", 224, 16, 384, 6, 6, 768, 6, 12, 2048, 32064, 4, 64),
}


def text_config(shape: BenchShape) -> Phi3Config:
    return Phi3Config(hidden_size=shape.text_width, intermediate_size=shape.text_mlp,
                      num_hidden_layers=shape.text_depth, num_attention_heads=shape.text_heads,
                      num_key_value_heads=shape.text_heads, vocab_size=shape.vocab_size, pad_token_id=0,
                      eos_token_id=1, bos_token_id=1, max_position_embeddings=2048,
                      original_max_position_embeddings=2048)


def build_sigphi(shape: BenchShape, seed: int = 0, image_token_reduction: int = 1, mlp_ratio: float = 4.0,
                 text: Phi3Config | None = None) -> SigPhiForConditionalGeneration:
    """SigPhi of `shape` (`text` overrides the decoder config); `image_token_reduction` r shuffles r×r patches into
    one image token."""
    torch.manual_seed(seed)
    config = SigPhiConfig(
        vision_config={"timm_model_name": "vit_base_patch16_siglip_224", "hidden_size": shape.vision_width,
                       "image_size": shape.image_size,
                       "timm_kwargs": {"img_size": shape.image_size, "patch_size": shape.patch_size,
                                       "embed_dim": shape.vision_width, "depth": shape.vision_depth,
                                       "num_heads": shape.vision_heads, "mlp_ratio": mlp_ratio}},
        text_config=text or text_config(shape), image_token_id=shape.vocab_size - 1,
        image_seq_length=reduced_image_seq_length(shape.image_tokens, image_token_reduction),
        image_token_reduction=image_token_reduction)
    return SigPhiForConditionalGeneration(config)


def build_llava(shape: BenchShape, seed: int = 0) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    vision = SiglipVisionConfig(hidden_size=shape.vision_width, intermediate_size=4 * shape.vision_width,
                                num_hidden_layers=shape.vision_depth, num_attention_heads=shape.vision_heads,
                                image_size=shape.image_size, patch_size=shape.patch_size, vision_use_head=False)
    config = LlavaConfig(vision_config=vision, text_config=text_config(shape), vision_feature_layer=-1,
                         vision_feature_select_strategy="full", image_token_id=shape.vocab_size - 1,
                         image_seq_length=shape.image_tokens)
    return LlavaForConditionalGeneration(config)


BUILDERS = {"sigphi": build_sigphi, "llava": build_llava}


def batch(shape: BenchShape, batch_size: int | None = None, seed: int = 0,
          image_tokens: int | None = None) -> dict[str, torch.Tensor]:
    """Inputs with one image per row: (B, seq) ids whose first image_tokens are `<image>`, (B, 3, H, W) pixels.

    `image_tokens` defaults to one per patch; a model that reduces image tokens passes its own count."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = batch_size or shape.batch_size
    image_tokens = image_tokens or shape.image_tokens
    input_ids = torch.randint(2, shape.vocab_size - 1, (batch_size, image_tokens + shape.text_tokens),
                              generator=generator)
    input_ids[:, 1:1 + image_tokens] = shape.vocab_size - 1
    pixel_values = torch.randn(batch_size, 3, shape.image_size, shape.image_size, generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixel_values}
