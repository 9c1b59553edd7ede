"""Processor of SigPhi: transformers' SigLIP image processor + the Phi-3 tokenizer + a chat template.

Only the processor knows how many tokens an image takes: it expands each `<image>` in the text into
`image_seq_length` copies (through `replace_image_token`, so the base class's `__call__` keeps offsets
and assistant masks right for TRL's `--assistant_only_loss`). It also turns any PIL image mode into RGB
before the image processor sees it, because a 1×1 or 3-pixel-wide array is otherwise ambiguous about
where its channels are, and palette/alpha/16-bit images would be misread.
"""

import numpy as np
from PIL import Image
from transformers import ProcessorMixin, SiglipImageProcessor
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import MultiModalData

IMAGE_TOKEN = "<image>"
# The label the loss ignores (PyTorch's cross-entropy default). Defined here because every saved folder that needs it
# ships this file: SigPhi's model masks labels with it, the retriever-generator's processor builds labels with it.
IGNORE_INDEX = -100

# Phi-3's chat format. `<image>` goes where the user's message has an image; assistant turns (with their
# closing `<|end|>`, so the model learns to stop) are wrapped in generation markers for assistant-only loss.
CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for item in content -%}"
    "{%- if item['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- render(message['content']) + '<|end|>' -}}{%- endgeneration -%}{{- '\n' -}}"
    "{%- else -%}{{- render(message['content']) + '<|end|>\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- endif -%}"
)


def to_rgb(image):
    """A PIL image of any mode as an 8-bit RGB PIL image, alpha composited on white.

    RGB images pass through untouched (a PIL image goes to a contiguous tensor without the copy a numpy
    array needs), and so do arrays and tensors: their layout is the caller's to state.
    """
    if not isinstance(image, Image.Image) or (image.mode == "RGB" and 0 not in image.size):
        return image
    if 0 in image.size:  # otherwise a reshape deep in the image processor fails with an unrelated message
        raise ValueError(f"An image of {image.width}×{image.height} pixels is empty: images need at least 1×1.")
    if image.mode == "La":  # premultiplied alpha: Pillow converts it to LA only
        image = image.convert("LA")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16/32-bit and float greyscale: scale to 8 bits instead of clipping everything above 255 to white.
        values = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 255.0)
        if image.mode == "F" and values.max() <= 1.0:
            high = 1.0
        image = Image.fromarray(np.clip(np.round(values * 255.0 / high), 0, 255).astype(np.uint8), mode="L")
    if "A" in image.getbands() or "transparency" in image.info:  # alpha (or a transparent palette entry) on white
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _map_images(images, fn):
    """Apply `fn` to every image of a possibly nested list (one list per sample), keeping the nesting."""
    if isinstance(images, (list, tuple)):
        return [_map_images(item, fn) for item in images]
    return fn(images)


def _is_one_list_per_sample(images, n_samples: int) -> bool:
    return (isinstance(images, (list, tuple)) and len(images) == n_samples
            and all(isinstance(item, (list, tuple)) for item in images))


def _all_pil(images) -> bool:
    if isinstance(images, (list, tuple)):
        return all(_all_pil(item) for item in images)
    return isinstance(images, Image.Image)


class SigPhiProcessor(ProcessorMixin):
    r"""
    Builds SigPhi inputs: `pixel_values` from the image processor and `input_ids`/`attention_mask` in which
    every `<image>` stands for `image_seq_length` tokens.

    Args:
        image_processor (`SiglipImageProcessor`): resize + normalise, configured from the timm data config.
        tokenizer (`PreTrainedTokenizerBase`): the decoder's tokenizer, with `<image>` as a special token.
        image_seq_length (`int`): number of image features per image (the vision tower's patch count).
        image_token (`str`): the placeholder string.
        chat_template (`str`): Jinja chat template; defaults to SigPhi's Phi-3 format.
    """

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 729,
                 image_token: str = IMAGE_TOKEN, chat_template: str | None = None):
        self.image_seq_length = image_seq_length
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {image_token!r} token: add it with tokenizer.add_special_tokens.")
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)

    @classmethod
    def from_vision_config(cls, tokenizer, vision_config, image_seq_length: int) -> "SigPhiProcessor":
        """Build the processor for a vision tower described by a `SigPhiVisionConfig`.

        SigLIP's eval transform is a plain resize (no crop) and a normalisation, which is exactly what
        `SiglipImageProcessor` does: configured with the tower's size, mean, std and interpolation, it
        reproduces timm's preprocessing without a hand-written transform.
        """
        image_processor = SiglipImageProcessor(
            size={"height": vision_config.image_size, "width": vision_config.image_size},
            image_mean=list(vision_config.image_mean),
            image_std=list(vision_config.image_std),
            resample=PILImageResampling[vision_config.resample.upper()],
        )
        return cls(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=image_seq_length)

    def validate_inputs(self, images=None, text=None, **kwargs):
        """The base class's checks (total placeholders == total images), then the same sample by sample when the
        images come as one list per sample (as TRL's collator and `train.evaluate` pass them): with equal totals
        an image would otherwise silently feed another sample's placeholder."""
        super().validate_inputs(images=images, text=text, **kwargs)
        if not (isinstance(text, list) and _is_one_list_per_sample(images, len(text))):
            return
        for index, (sample, sample_images) in enumerate(zip(text, images)):
            n_placeholders = sample.count(self.image_token)
            if n_placeholders != len(sample_images):
                raise ValueError(f"Sample {index} of the batch has {n_placeholders} {self.image_token} tokens and "
                                 f"{len(sample_images)} images: each placeholder takes one image of its own sample.")

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """transformers' `save_pretrained`, minus one side effect: writing a remote-code processor's `auto_map`
        leaves it as an attribute of the instance, so the saved processor would no longer equal (`to_dict`) the
        one loaded back from its folder. The folder keeps its `auto_map`; the instance forgets it."""
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            self.__dict__.pop("auto_map", None)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.image_seq_length

    def _process_images(self, images, **kwargs):
        if _all_pil(images):
            images = _map_images(images, to_rgb)
        return super()._process_images(images, **kwargs)

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Tokens per image, as serving engines (vLLM) ask processors before they see pixels."""
        if image_sizes is None:
            return MultiModalData()
        return MultiModalData(num_image_tokens=[self.image_seq_length] * len(image_sizes),
                              num_image_patches=[1] * len(image_sizes))


__all__ = ["SigPhiProcessor"]
