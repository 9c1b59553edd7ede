"""SigPhi: a timm SigLIP image encoder and a Phi-3 decoder joined by an MLP projector.

The layout is transformers' Llava layout on purpose: `SigPhiForConditionalGeneration.model` is a
`SigPhiModel` holding `vision_tower`, `multi_modal_projector` and `language_model`, and the LM head
sits on the outer class. TRL's fused-LM-head training calls `model.model(...)` and reads
`last_hidden_state` after the image features are merged; LoRA regexes written for Llava-style models
(`.*language_model.*q_proj`) find the same module names here.

The processor expands each `<image>` into `image_seq_length` placeholder tokens; this file only replaces
the embeddings at those positions with projected image features (`masked_scatter`), and ignores the
labels there, because TRL's collators do not mask image tokens.
"""

import math
from dataclasses import dataclass

import timm
import torch
from torch import nn
from transformers import (AddedToken, AutoModel, AutoModelForCausalLM, AutoTokenizer, GenerationMixin,
                          PreTrainedModel)
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple

from configuration.configuration_sigphi import SigPhiConfig, reduced_image_seq_length
from processing.processing_sigphi import IGNORE_INDEX, IMAGE_TOKEN, SigPhiProcessor

from .self_contained_saving import SelfContainedSaveMixin
from .timm_vision import build_vision_tower, describe_timm_tower, record_blocks, select_features
from .transformers_compat import CACHE_NAME, output_cache, take_cache


# Both subclass transformers' own output classes, so the KV cache field is whatever the installed release calls it
# (`cache` from 5.24, `past_key_values` before) and transformers' own renaming shims apply to them.
@dataclass
class SigPhiModelOutputWithPast(BaseModelOutputWithPast):
    """Decoder outputs plus the images': `image_hidden_states` (num_images, image_seq_length, text_hidden_size), the
    projected features the decoder read, and `image_outputs`, all that `get_image_features` returned."""

    image_hidden_states: torch.Tensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


@dataclass
class SigPhiCausalLMOutputWithPast(CausalLMOutputWithPast):
    """Language-modelling outputs of [`SigPhiForConditionalGeneration`], plus the images' (as in the model output)."""

    image_hidden_states: torch.Tensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


def pixel_shuffle(features: torch.Tensor, factor: int) -> torch.Tensor:
    """Space-to-depth on the patch grid: (num_images, g*g, C) -> (num_images, ceil(g/r)^2, C*r^2).

    Each r×r block of neighbouring patches becomes one token holding their features side by side (row-major
    within the block); a grid that r does not divide is first padded with zeros at the right and bottom.
    """
    if factor == 1:
        return features
    num_images, num_patches, channels = features.shape
    grid = math.isqrt(num_patches)
    padded = -(-grid // factor) * factor
    features = features.reshape(num_images, grid, grid, channels)
    features = nn.functional.pad(features, (0, 0, 0, padded - grid, 0, padded - grid))
    blocks = padded // factor
    features = features.reshape(num_images, blocks, factor, blocks, factor, channels).permute(0, 1, 3, 2, 4, 5)
    return features.reshape(num_images, blocks * blocks, factor * factor * channels)


class SigPhiMultiModalProjector(nn.Module):
    """Pixel shuffle by `image_token_reduction` (r), then a two-layer MLP mapping the (vision hidden × r²)-wide
    features into the decoder's embedding space (text hidden)."""

    def __init__(self, config: SigPhiConfig):
        super().__init__()
        self.image_token_reduction = config.image_token_reduction
        text_hidden = config.text_config.hidden_size
        in_features = config.vision_config.hidden_size * self.image_token_reduction**2
        self.linear_1 = nn.Linear(in_features, text_hidden, bias=config.multimodal_projector_bias)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=config.multimodal_projector_bias)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        image_features = pixel_shuffle(image_features, self.image_token_reduction)
        return self.linear_2(self.act(self.linear_1(image_features)))


class SigPhiPreTrainedModel(SelfContainedSaveMixin, PreTrainedModel):
    """Shared capabilities of the SigPhi classes, declared the way transformers' built-in models do."""

    config_class = SigPhiConfig
    config: SigPhiConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Phi3DecoderLayer", "Block", "SigPhiMultiModalProjector"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    # Kept out of bitsandbytes quantization (4-/8-bit loading quantizes every other nn.Linear); upcast in fp16.
    _keep_in_fp32_modules = ["vision_tower", "multi_modal_projector"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False
    extra_auto_classes = {"AutoModel": "SigPhiModel", "AutoModelForCausalLM": "SigPhiForConditionalGeneration",
                          "AutoModelForImageTextToText": "SigPhiForConditionalGeneration"}

    def _set_gradient_checkpointing(self, enable: bool = True, *args, **kwargs):
        """Checkpoint the timm tower as well: timm has its own switch (non-reentrant `torch.utils.checkpoint`)."""
        super()._set_gradient_checkpointing(enable, *args, **kwargs)
        for module in self.modules():
            if isinstance(module, SigPhiModel):
                module.vision_tower.set_grad_checkpointing(enable)


class SigPhiModel(SigPhiPreTrainedModel):
    """Vision tower + projector + decoder, without the LM head; returns hidden states after the image merge."""

    def __init__(self, config: SigPhiConfig):
        super().__init__(config)
        self.vision_tower = build_vision_tower(config.vision_config)
        if self.vision_tower.num_features != config.vision_config.hidden_size:
            raise ValueError(
                f"vision_config.hidden_size is {config.vision_config.hidden_size} but the timm model "
                f"{config.vision_config.timm_model_name!r} returns {self.vision_tower.num_features} features."
            )
        self.multi_modal_projector = SigPhiMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                           output_attentions: bool | None = None, **kwargs) -> BaseModelOutputWithPooling:
        """Encode and project images, as transformers' Llava does: (num_images, 3, H, W) ->
        `last_hidden_state` (num_images, image_seq_length, vision_hidden), the vision tower's selected features,
        `pooler_output` (num_images, image_seq_length, text_hidden), the projected features the decoder reads, and,
        when asked (or set in the config), the tower's per-block `hidden_states` and `attentions`."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        tower = self.vision_tower
        pixel_values = pixel_values.to(dtype=tower.patch_embed.proj.weight.dtype)
        with record_blocks(tower, output_hidden_states, output_attentions) as (hidden_states, attentions):
            features = select_features(tower, pixel_values, self.config.vision_config.vision_feature_layer)
        projected = self.multi_modal_projector(features.to(self.multi_modal_projector.linear_1.weight.dtype))
        return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=projected,
                                          hidden_states=tuple(hidden_states) if hidden_states is not None else None,
                                          attentions=tuple(attentions) if attentions is not None else None)

    def get_placeholder_mask(self, input_ids: torch.LongTensor | None,
                             inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        """(batch, seq) mask of `<image>` positions, found from `input_ids` or, without them, from the embeddings."""
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_embedding = self.get_input_embeddings()(
            torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
        )
        return (inputs_embeds == image_embedding).all(-1)

    def merge_image_features(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Scatter image features into the `<image>` positions of `inputs_embeds` (batch, seq, text_hidden)."""
        image_mask = self.get_placeholder_mask(input_ids, inputs_embeds)
        n_tokens, n_features = int(image_mask.sum()), image_features.shape[0] * image_features.shape[1]
        if n_tokens != n_features:
            raise ValueError(
                f"Image features and image tokens do not match: the input has {n_tokens} <image> tokens but the "
                f"{image_features.shape[0]} image(s) give {n_features} features ({image_features.shape[1]} each). "
                "Build inputs with the SigPhi processor, which expands every <image> to image_seq_length tokens."
            )
        image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), image_features)

    def check_context_length(self, n_new_tokens: int, cache: Cache | None,
                             position_ids: torch.LongTensor | None = None) -> None:
        """Refuse a sequence longer than the decoder's context (`text_config.max_position_embeddings`).

        RoPE would otherwise run on past the positions the decoder was trained for and answer with silent
        garbage. The check lives here, not in the processor, because every path reaches this forward (processor,
        pipeline, TRL's fused-head training, raw `input_ids`, vLLM's Transformers backend), only the model's config
        knows the context, and only here is the generated part of the sequence (the KV cache) known.

        Each sequence is judged by its own positions when `position_ids` are given: vLLM packs every token of a
        scheduled step into one (1, total) row whose positions restart at each request, and TRL's padding-free
        batches do the same, so the row's width says nothing about any one sequence's length. Without
        positions, the cache length plus the new tokens is the sequence's length.
        """
        n_cached = cache.get_seq_length() if cache is not None else 0
        length = n_cached + n_new_tokens
        if position_ids is not None and position_ids.numel():
            length = int(position_ids.max()) + 1
        limit = self.config.text_config.max_position_embeddings
        if length > limit:
            counted = (f"{n_cached} already processed, {n_new_tokens} new" if length == n_cached + n_new_tokens
                       else "its last position id is " + str(length - 1))
            raise ValueError(
                f"The sequence is {length} tokens long ({counted}) but the model's context is {limit} tokens "
                f"(text_config.max_position_embeddings). Shorten the prompt (each image takes "
                f"{self.config.image_seq_length} tokens) or generate fewer new tokens."
            )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SigPhiModelOutputWithPast:
        r"""
        cache (`Cache`, *optional*): the KV cache; `past_key_values=` is accepted too (the name before
            transformers 5.24, which its `generate` still passes).
        kwargs: passed to the decoder (`use_cache`, `output_hidden_states`, `output_attentions`, ...).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        cache = take_cache(cache, kwargs)
        n_new_tokens = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        self.check_context_length(n_new_tokens, cache, position_ids)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        image_outputs = image_features = None
        if pixel_values is not None:
            image_outputs = self.get_image_features(pixel_values,
                                                    output_hidden_states=kwargs.get("output_hidden_states"),
                                                    output_attentions=kwargs.get("output_attentions"), return_dict=True)
            image_features = image_outputs.pooler_output
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, image_features)
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **{CACHE_NAME: cache},
            **kwargs,
        )
        return SigPhiModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
            image_outputs=image_outputs,
            **{CACHE_NAME: output_cache(outputs)},
        )


class SigPhiForConditionalGeneration(SigPhiPreTrainedModel, GenerationMixin):
    """SigPhi with its LM head: answers questions about images with `generate()`, trains with TRL's `SFTTrainer`."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    # Also with the `model.` prefix here: bitsandbytes' quantizer matches names from the start of the module path.
    _keep_in_fp32_modules = ["vision_tower", "multi_modal_projector",
                             "model.vision_tower", "model.multi_modal_projector"]

    def __init__(self, config: SigPhiConfig):
        super().__init__(config)
        self.model = SigPhiModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained_components(
        cls,
        vision_model: str,
        text_model: str,
        vision_kwargs: dict | None = None,
        vision_feature_layer: int = -1,
        dtype: torch.dtype = torch.float32,
        image_token_reduction: int = 1,
        **text_kwargs,
    ) -> tuple["SigPhiForConditionalGeneration", SigPhiProcessor]:
        """Build SigPhi from a pretrained timm image encoder and a pretrained Phi-3 checkpoint.

        The model skeleton is created on the `meta` device and the pretrained towers are put in place,
        so memory holds each weight once; only the projector is freshly initialised (stage-1 alignment
        trains it). Adds `<image>` to the tokenizer (resizing the embeddings only if the vocabulary has no
        spare rows; Phi-3-mini has 53) and returns the model with a matching processor.

        Args:
            vision_model: timm name with pretrained weights, e.g. `"vit_so400m_patch14_siglip_384.webli"`.
            text_model: Hub id or folder of a causal LM, e.g. `"microsoft/Phi-3-mini-4k-instruct"`.
            vision_kwargs: extra `timm.create_model` arguments (`pretrained_cfg_overlay=dict(file=...)` loads
                the weights from a local file).
            vision_feature_layer: which vision block feeds the projector (-1: final output).
            dtype: dtype of the whole model.
            image_token_reduction: pixel-shuffle factor of the projector (see `SigPhiConfig`).
            text_kwargs: passed to `AutoModelForCausalLM.from_pretrained` (e.g. `revision`).
        """
        vision_kwargs = dict(vision_kwargs or {})
        tokenizer = AutoTokenizer.from_pretrained(text_model)
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        text_lm = AutoModelForCausalLM.from_pretrained(text_model, dtype=dtype, **text_kwargs)

        tower = timm.create_model(vision_model, pretrained=True, num_classes=0, **vision_kwargs)
        tower.reset_classifier(0, global_pool="")
        vision_config = describe_timm_tower(tower, vision_model, {**vision_kwargs, "global_pool": ""},
                                            vision_feature_layer)
        config = SigPhiConfig(
            vision_config=vision_config,
            text_config=text_lm.config,
            image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            image_seq_length=reduced_image_seq_length(tower.patch_embed.num_patches, image_token_reduction),
            image_token_reduction=image_token_reduction,
        )
        with torch.device("meta"):
            model = cls(config)
        model.model.vision_tower = tower.to(dtype)
        model.model.language_model = text_lm.get_decoder()
        model.lm_head = text_lm.get_output_embeddings()
        model.model.multi_modal_projector = SigPhiMultiModalProjector(config).to(dtype)
        model.generation_config = text_lm.generation_config
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        on_meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
        if on_meta:
            raise RuntimeError(f"from_pretrained_components left tensors without data: {on_meta[:5]}")
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        processor = SigPhiProcessor.from_vision_config(tokenizer, vision_config, config.image_seq_length)
        return model, processor

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.vision_tower

    @property
    def multi_modal_projector(self) -> nn.Module:
        return self.model.multi_modal_projector

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        return self.model.get_image_features(pixel_values, **kwargs)

    def freeze_vision_tower(self, freeze: bool = True) -> None:
        """Stop (or restart) training the image encoder, as in stage-1 alignment and QLoRA fine-tuning."""
        self.model.vision_tower.requires_grad_(not freeze)

    def freeze_language_model(self, freeze: bool = True) -> None:
        """Stop (or restart) training the decoder and its LM head; stage-1 alignment trains the projector only."""
        self.model.language_model.requires_grad_(not freeze)
        self.lm_head.requires_grad_(not freeze)

    def mask_ignored_labels(
        self,
        labels: torch.LongTensor,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> torch.LongTensor:
        """Ignore labels at `<image>` positions and at padding (by the attention mask, so pad == eos still trains
        EOS)."""
        ignored = self.model.get_placeholder_mask(input_ids, inputs_embeds)
        if attention_mask is not None and attention_mask.dim() == 2:
            ignored = ignored | (attention_mask == 0)
        return labels.masked_fill(ignored.to(labels.device), IGNORE_INDEX)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SigPhiCausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Next-token targets aligned with `input_ids` (the loss shifts them). Positions of `<image>` tokens and
            padding are ignored here, whatever the caller put there.
        cache, kwargs: as for [`SigPhiModel.forward`].
        """
        cache = take_cache(cache, kwargs)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **{CACHE_NAME: cache},
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        loss = None
        if labels is not None:
            labels = self.mask_ignored_labels(labels, input_ids, inputs_embeds, attention_mask)
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size,
                                      **kwargs)

        return SigPhiCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
            image_outputs=outputs.image_outputs,
            **{CACHE_NAME: output_cache(outputs)},
        )


__all__ = ["SigPhiForConditionalGeneration", "SigPhiModel", "SigPhiPreTrainedModel"]
