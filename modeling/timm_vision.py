"""SigPhi's vision tower: a timm image encoder, rebuilt from its config and read the way transformers reads a tower.

transformers' vision-language models return, from `get_image_features`, the tower's hidden state after every
block (`output_hidden_states`) and its attention maps (`output_attentions`), as transformers' own vision models
do. timm models return neither, so `record_blocks` hooks a timm ViT's blocks to collect them: the input of the
first block (the patch embeddings) and each block's output, and each block's attention probabilities, read at
the input of `attn.attn_drop` with timm's fused attention switched off for that call (the same softmax, written
out, as transformers' `eager` attention does). Towers without `blocks` (CNNs) have neither and give `None`.

Copied into saved model folders (the modeling file imports it relatively): torch, transformers and timm only.
"""

from contextlib import contextmanager

import timm
import torch
from torch import nn

from configuration.configuration_sigphi import SigPhiVisionConfig


def build_vision_tower(vision_config: SigPhiVisionConfig) -> nn.Module:
    """Rebuild the timm image encoder from its config alone (never downloads: weights come from the checkpoint)."""
    return timm.create_model(vision_config.timm_model_name, pretrained=False, **vision_config.timm_kwargs)


def describe_timm_tower(tower: nn.Module, timm_model_name: str, timm_kwargs: dict,
                        vision_feature_layer: int = -1) -> SigPhiVisionConfig:
    """The `SigPhiVisionConfig` of a built timm tower: size, width, normalisation read off the model itself.

    The input size comes from the patch embedding, not from `resolve_model_data_config`, which reports
    the pretrained size even when `img_size` was overridden.
    """
    pretrained_cfg = getattr(tower, "pretrained_cfg", {}) or {}
    return SigPhiVisionConfig(
        timm_model_name=timm_model_name,
        timm_kwargs={key: value for key, value in timm_kwargs.items() if key != "pretrained_cfg_overlay"},
        hidden_size=tower.num_features,
        vision_feature_layer=vision_feature_layer,
        image_size=tower.patch_embed.img_size[0],
        image_mean=pretrained_cfg.get("mean", (0.5, 0.5, 0.5)),
        image_std=pretrained_cfg.get("std", (0.5, 0.5, 0.5)),
        resample=pretrained_cfg.get("interpolation", "bicubic"),
    )


def select_features(tower: nn.Module, pixel_values: torch.Tensor, vision_feature_layer: int) -> torch.Tensor:
    """(num_images, num_patches, vision_hidden) features of one block: -1 is the final output after the tower's
    last norm (prefix tokens dropped), other values index `forward_intermediates` (e.g. -2)."""
    if vision_feature_layer == -1:
        return tower.forward_features(pixel_values)[:, getattr(tower, "num_prefix_tokens", 0):]
    return tower.forward_intermediates(pixel_values, indices=[vision_feature_layer], output_fmt="NLC",
                                       intermediates_only=True)[0]


@contextmanager
def record_blocks(tower: nn.Module, hidden_states: bool, attentions: bool):
    """Collect the tower's per-block hidden states and attention maps while the `with` body runs.

    Yields two lists (filled during the forward) or None for what was not asked or cannot be read: hidden states
    are (num_images, tokens, vision_hidden), depth + 1 of them; attentions (num_images, heads, tokens, tokens).
    """
    blocks = getattr(tower, "blocks", None)
    states = [] if hidden_states and blocks is not None else None
    maps = [] if attentions and blocks is not None and all(hasattr(b, "attn") for b in blocks) else None
    handles, fused = [], []
    if states is not None:
        handles.append(blocks[0].register_forward_pre_hook(lambda module, args: states.append(args[0])))
        handles += [block.register_forward_hook(lambda module, args, output: states.append(output))
                    for block in blocks]
    if maps is not None:
        for block in blocks:
            fused.append((block.attn, block.attn.fused_attn))
            block.attn.fused_attn = False
            handles.append(block.attn.attn_drop.register_forward_hook(
                lambda module, args, output: maps.append(output)))
    try:
        yield states, maps
    finally:
        for handle in handles:
            handle.remove()
        for attention, was_fused in fused:
            attention.fused_attn = was_fused
