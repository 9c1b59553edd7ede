"""Configuration of SigPhi: a timm SigLIP image encoder, an MLP projector and a Phi-3 decoder.

The layout follows transformers' `LlavaConfig` (a composite config with `vision_config` and
`text_config` sub-configs), so generic tooling (`config.get_text_config()`, TRL, PEFT) finds the
decoder's settings where it expects them. The vision tower is a timm model, so its config stores the
timm model name and the keyword arguments needed to rebuild it without downloading anything.
"""

import math

from transformers import AutoConfig, PreTrainedConfig

SIGLIP_MEAN_STD = (0.5, 0.5, 0.5)


def resolve_sub_config(value: dict | PreTrainedConfig | None, default_model_type: str,
                       known_configs: dict[str, type[PreTrainedConfig]] | None = None,
                       **default_kwargs) -> PreTrainedConfig:
    """A sub-config object from a config, a `to_dict()` dict (its `model_type` picks the class) or None (defaults).

    Composite configs resolve their sub-configs here, in `__post_init__`, instead of declaring transformers'
    `sub_configs_defaults`: that table changed form twice (5.20 introduced `SubConfigSpec`, 5.21 started wrapping
    plain classes), while a `sub_configs` class map plus this function loads the same on every 5.x from 5.17 on.
    `known_configs` maps this project's model types to their classes, because a Hub user's process has not
    registered them with `AutoConfig`.
    """
    if isinstance(value, PreTrainedConfig):
        return value
    kwargs = dict(value) if value is not None else dict(default_kwargs)
    model_type = kwargs.pop("model_type", default_model_type)
    config_class = (known_configs or {}).get(model_type)
    return config_class(**kwargs) if config_class is not None else AutoConfig.for_model(model_type, **kwargs)


class SigPhiVisionConfig(PreTrainedConfig):
    r"""
    Describes the timm image encoder of SigPhi.

    Args:
        timm_model_name (`str`): timm architecture name, e.g. `"vit_so400m_patch14_siglip_384"`.
        timm_kwargs (`dict`): keyword arguments for `timm.create_model` that rebuild the exact architecture
            (e.g. `img_size`, `patch_size`, `embed_dim`, `depth`, `num_heads`). `num_classes=0` and
            `global_pool=""` are always added: SigPhi uses the token features, never a pooled vector.
        hidden_size (`int`): width of the features the tower returns (timm's `num_features`).
        vision_feature_layer (`int`): which block's output feeds the projector; `-1` is the final output
            after the tower's last norm, other values index `forward_intermediates` (e.g. `-2`).
        image_size (`int`): square input resolution the tower was built for.
        image_mean, image_std (`list[float]`): normalisation the tower was trained with (0.5 for SigLIP).
        resample (`str`): timm's interpolation name used for resizing (`"bicubic"` for SigLIP).
    """

    model_type = "sigphi_vision"
    base_config_key = "vision_config"

    timm_model_name: str = "vit_so400m_patch14_siglip_384"
    timm_kwargs: dict | None = None
    hidden_size: int = 1152
    vision_feature_layer: int = -1
    image_size: int = 384
    image_mean: list[float] | tuple[float, ...] = SIGLIP_MEAN_STD
    image_std: list[float] | tuple[float, ...] = SIGLIP_MEAN_STD
    resample: str = "bicubic"

    def __post_init__(self, **kwargs):
        self.timm_kwargs = {**(self.timm_kwargs or {}), "num_classes": 0, "global_pool": ""}
        self.image_mean = list(self.image_mean)
        self.image_std = list(self.image_std)
        super().__post_init__(**kwargs)


class SigPhiConfig(PreTrainedConfig):
    r"""
    Configuration of [`SigPhiForConditionalGeneration`].

    Args:
        vision_config (`SigPhiVisionConfig` or `dict`): the timm image encoder.
        text_config (`Phi3Config` or `dict`): the decoder (any causal LM config works; Phi-3 is the default).
        image_token_id (`int`): id of the `<image>` placeholder token in the tokenizer.
        image_seq_length (`int`): number of image features (and so of `<image>` tokens) per image, after the
            reduction below: `reduced_image_seq_length(num_patches, image_token_reduction)`.
        image_token_reduction (`int`): pixel-shuffle factor r of the projector. Each r×r block of neighbouring
            patches becomes one token r² times as wide (Idefics3/SmolVLM's connector), so an image takes r² times
            fewer decoder positions; a grid that r does not divide (SigLIP-384/14's 27×27) is padded with zero
            features at the right and bottom to the next multiple of r. 1 (the default, and what every config
            saved before this option reads as) keeps one token per patch.
        projector_hidden_act (`str`): activation between the projector's two linear layers.
        multimodal_projector_bias (`bool`): whether the projector's linear layers have a bias.
    """

    model_type = "sigphi"
    sub_configs = {"vision_config": SigPhiVisionConfig, "text_config": AutoConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32011
    image_seq_length: int = 729
    image_token_reduction: int = 1
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        self.vision_config = resolve_sub_config(self.vision_config, "sigphi_vision",
                                                {"sigphi_vision": SigPhiVisionConfig})
        self.text_config = resolve_sub_config(self.text_config, "phi3")
        if not isinstance(self.image_token_reduction, int) or self.image_token_reduction < 1:
            raise ValueError(f"image_token_reduction must be an integer >= 1, got {self.image_token_reduction!r}")
        super().__post_init__(**kwargs)


def reduced_image_seq_length(num_patches: int, image_token_reduction: int) -> int:
    """Tokens per image once a square grid of `num_patches` is pixel-shuffled by r (padded up to a multiple of r):
    729 patches (27×27) give 729, 196 (14×14) and 81 (9×9) tokens for r = 1, 2, 3."""
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(f"token reduction needs a square patch grid, got {num_patches} patches")
    return (-(-grid // image_token_reduction)) ** 2


__all__ = ["SigPhiConfig", "SigPhiVisionConfig", "reduced_image_seq_length"]
