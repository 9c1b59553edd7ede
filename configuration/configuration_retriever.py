"""Configuration of the multimodal retriever: a dual encoder that puts queries (image + question) and documents
(texts, images, or images with their text) in one embedding space.

Its towers come one of two ways:
- a published transformers dual encoder, as it is (`dual_encoder_config`: `SiglipModel`, `Siglip2Model`,
  `CLIPModel` or any model with `get_text_features` and `get_image_features` in one space);
- a text tower (a transformers text encoder described by `text_config`) beside an image tower (a timm model, stored
  as its name and keyword arguments so it rebuilds without downloads), each with a projection into the shared
  space: how the tiny preset builds its small from-scratch towers (a 2-layer text encoder, a small CNN).
Both towers serve queries and documents alike.
"""

from transformers import AutoConfig, PreTrainedConfig

from .configuration_sigphi import resolve_sub_config

RETRIEVAL_LOSSES = ("infonce", "sigmoid")
TEXT_POOLINGS = ("mean", "pooler")
# Default text tower: SigLIP-SO400M's text model, the partner of the default image tower.
SIGLIP_SO400M_TEXT = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                      "num_attention_heads": 16, "bos_token_id": None, "eos_token_id": 1, "pad_token_id": 1}


class MultimodalRetrieverConfig(PreTrainedConfig):
    r"""
    Configuration of [`MultimodalRetrieverModel`].

    Args:
        dual_encoder_config (`PreTrainedConfig` or `dict`, *optional*): a published dual encoder (`siglip`,
            `siglip2`, `clip`, ...) whose own towers and projections embed texts and images; the tower arguments
            below are then unused.
        text_config (`PreTrainedConfig` or `dict`): the text encoder (default: SigLIP's, `siglip_text_model`).
        image_model_name (`str`): timm architecture of the image tower, e.g. `"vit_so400m_patch14_siglip_384"`.
        image_model_kwargs (`dict`): extra `timm.create_model` arguments rebuilding the exact architecture;
            `num_classes=0` is always added (the tower returns its pooled features).
        image_size (`int`): square input resolution of the image tower.
        image_mean, image_std (`list[float]`): normalisation the image tower expects.
        projection_dim (`int`): width of the shared embedding space.
        text_pooling (`str`): `"mean"` (masked mean of the last hidden states; for encoders trained from scratch)
            or `"pooler"` (the encoder's own pooled output, as SigLIP was trained).
        loss_type (`str`): `"infonce"` (softmax over the candidate documents, several positives allowed) or
            `"sigmoid"` (SigLIP's independent binary loss per query-document pair).
        logit_scale_init (`float`): initial log temperature multiplying cosine similarities.
        logit_bias_init (`float`): initial bias of the sigmoid loss (SigLIP starts at -10: most pairs are negative).
    """

    model_type = "multimodal_retriever"
    sub_configs = {"text_config": AutoConfig, "dual_encoder_config": AutoConfig}

    dual_encoder_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_model_name: str = "vit_so400m_patch14_siglip_384"
    image_model_kwargs: dict | None = None
    image_size: int = 384
    image_mean: list[float] | tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: list[float] | tuple[float, ...] = (0.5, 0.5, 0.5)
    projection_dim: int = 1152
    text_pooling: str = "pooler"
    loss_type: str = "infonce"
    logit_scale_init: float = 2.6592
    logit_bias_init: float = -10.0

    def __post_init__(self, **kwargs):
        self.image_model_kwargs = {**(self.image_model_kwargs or {}), "num_classes": 0}
        self.image_mean, self.image_std = list(self.image_mean), list(self.image_std)
        if self.loss_type not in RETRIEVAL_LOSSES:
            raise ValueError(f"loss_type must be one of {RETRIEVAL_LOSSES}, got {self.loss_type!r}")
        if self.text_pooling not in TEXT_POOLINGS:
            raise ValueError(f"text_pooling must be one of {TEXT_POOLINGS}, got {self.text_pooling!r}")
        if self.dual_encoder_config is not None:
            self.dual_encoder_config = resolve_sub_config(self.dual_encoder_config, "siglip")
            self.projection_dim = dual_encoder_width(self.dual_encoder_config)
        else:
            self.text_config = resolve_sub_config(self.text_config, "siglip_text_model", **SIGLIP_SO400M_TEXT)
        super().__post_init__(**kwargs)


def dual_encoder_width(config: PreTrainedConfig) -> int:
    """The width of a dual encoder's shared space: CLIP's `projection_dim`, SigLIP's text `projection_size`."""
    if getattr(config, "projection_dim", None):
        return config.projection_dim
    text_config = config.get_text_config()
    return getattr(text_config, "projection_size", None) or text_config.hidden_size


__all__ = ["MultimodalRetrieverConfig"]
