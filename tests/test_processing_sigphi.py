"""SigPhiProcessor: image-token expansion, chat template, batching, odd images, and clear errors."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from processing import SigPhiProcessor
from tests.conftest import chat, random_image


def test_each_image_placeholder_expands_to_image_seq_length_tokens(tiny):
    _, processor = tiny
    inputs = processor(text=[chat(processor, n_images=2)], images=[[random_image(0), random_image(1)]],
                       return_tensors="pt")
    n_image_tokens = int((inputs["input_ids"] == processor.image_token_id).sum())
    assert n_image_tokens == 2 * processor.image_seq_length
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)


def test_chat_template_follows_phi3_format_with_the_image_where_the_user_put_it(tiny):
    _, processor = tiny
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "image"},
                                             {"type": "text", "text": " which digit?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "7"}]}]
    text = processor.apply_chat_template(messages)
    assert text == ("<|system|>\nBe brief.<|end|>\n<|user|>\nLook: <image> which digit?<|end|>\n"
                    "<|assistant|>\n7<|end|>\n")
    assert chat(processor).endswith("<|end|>\n<|assistant|>\n")


def test_assistant_mask_covers_the_answer_and_its_end_token_only(tiny):
    _, processor = tiny
    messages = [{"role": "user", "content": [{"type": "image", "image": random_image(0)},
                                             {"type": "text", "text": "What digit?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "7"}]}]
    out = processor.apply_chat_template([messages], tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True, return_tensors="pt")
    ids, mask = out["input_ids"][0], out["assistant_masks"][0].bool()
    assert processor.tokenizer.convert_ids_to_tokens(ids[mask].tolist()) == ["7", "<|end|>"]
    assert not mask[ids == processor.image_token_id].any()


@pytest.mark.parametrize("side", ["left", "right"])
def test_batches_of_different_lengths_are_padded_on_the_requested_side(tiny, side):
    _, processor = tiny
    texts = [chat(processor, "Hi?"), chat(processor, "A much longer question about the picture?")]
    inputs = processor(text=texts, images=[[random_image(0)], [random_image(1)]], return_tensors="pt",
                       padding=True, padding_side=side)
    mask = inputs["attention_mask"]
    assert mask.shape == inputs["input_ids"].shape
    short = mask[0]
    assert short.sum() < short.numel()
    assert (short[0] == 0) if side == "left" else (short[-1] == 0)
    assert (inputs["input_ids"][0][short == 0] == processor.tokenizer.pad_token_id).all()


def odd_images():
    return {
        "L": Image.new("L", (30, 40), 128),
        "LA": Image.new("LA", (30, 40), (128, 255)),
        "P": Image.new("P", (30, 40)),
        "RGBA": Image.new("RGBA", (30, 40), (1, 2, 3, 255)),
        "I;16": Image.fromarray(np.full((40, 30), 40000, dtype=np.uint16)),
        "I": Image.fromarray(np.full((40, 30), 70000, dtype=np.int32)),
        "F": Image.fromarray(np.full((40, 30), 0.5, dtype=np.float32)),
        "CMYK": Image.new("CMYK", (30, 40), (0, 0, 0, 0)),
        "1": Image.new("1", (30, 40), 1),
        "1x1": Image.new("RGB", (1, 1), (255, 0, 0)),
        "3 wide": Image.new("RGB", (3, 5), (255, 0, 0)),
        "10000x10": Image.new("RGB", (10000, 10), (0, 255, 0)),
    }


@pytest.mark.parametrize("name", list(odd_images()))
def test_any_image_mode_and_size_becomes_one_rgb_image_of_the_model_size(tiny, name):
    _, processor = tiny
    inputs = processor(text=[chat(processor)], images=[[odd_images()[name]]], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    assert torch.isfinite(inputs["pixel_values"]).all()


def pixel(processor, image) -> list[float]:
    """The normalised value of the centre pixel, per channel."""
    values = processor(text=[chat(processor)], images=[[image]], return_tensors="pt")["pixel_values"]
    return [round(v, 2) for v in values[0, :, 16, 16].tolist()]


def test_colours_survive_conversion_with_channels_in_the_right_place(tiny):
    _, processor = tiny
    # (x - 0.5) / 0.5 on [0, 1]: red -> (1, -1, -1); a 1x1 image is not mistaken for channels-first
    assert pixel(processor, Image.new("RGB", (1, 1), (255, 0, 0))) == [1.0, -1.0, -1.0]
    assert pixel(processor, Image.new("RGB", (3, 3), (0, 0, 255))) == [-1.0, -1.0, 1.0]
    # transparency is composited onto white, palette and CMYK decode to their colours
    assert pixel(processor, Image.new("RGBA", (8, 8), (0, 0, 0, 0))) == [1.0, 1.0, 1.0]
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    assert pixel(processor, palette) == [-1.0, 1.0, -1.0]
    assert pixel(processor, Image.new("CMYK", (8, 8), (0, 0, 0, 0))) == [1.0, 1.0, 1.0]
    # 16-bit greyscale is scaled to 8 bits (65535 -> 255), not clipped: 32896/65535*255 = 128
    grey16 = Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16))
    assert pixel(processor, grey16) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("n_placeholders, n_images", [(2, 1), (1, 2), (0, 1)])
def test_placeholder_and_image_counts_must_match(tiny, n_placeholders, n_images):
    _, processor = tiny
    text = chat(processor, n_images=n_placeholders)
    images = [[random_image(i) for i in range(n_images)]]
    with pytest.raises(ValueError, match=rf"{n_placeholders} <image> tokens and {n_images} images"):
        processor(text=[text], images=images, return_tensors="pt")


def test_placeholders_without_any_image_are_refused(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match="1 <image> tokens in the text but no images"):
        processor(text=[chat(processor)], return_tensors="pt")


def test_text_only_prompts_need_no_image(tiny):
    _, processor = tiny
    inputs = processor(text=["<|user|>\nHello<|end|>\n<|assistant|>\n"], return_tensors="pt")
    assert "pixel_values" not in inputs and inputs["input_ids"].shape[0] == 1


def test_tokenizer_without_image_token_is_refused(tiny):
    from train.common.tokenizer import build_byte_level_tokenizer

    _, processor = tiny
    with pytest.raises(ValueError, match="no '<img>' token"):
        SigPhiProcessor(processor.image_processor, build_byte_level_tokenizer(), image_token="<img>")


def test_save_and_load_round_trip_keeps_template_and_expansion(tiny, tmp_path):
    _, processor = tiny
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").exists()
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, SigPhiProcessor)
    assert loaded.image_seq_length == processor.image_seq_length
    assert loaded.chat_template == processor.chat_template
    text, images = [chat(processor)], [[random_image(3)]]
    a = processor(text=text, images=images, return_tensors="pt")
    b = loaded(text=text, images=images, return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])


@pytest.mark.parametrize("size", [(32, 32), (64, 48), (20, 30)])
def test_image_processor_matches_timm_squash_resize_transform(tiny, size):
    """SigLIP is trained on plain resizes (no crop): SiglipImageProcessor built from the timm data config gives
    timm's own eval transform in that mode, up to one 8-bit level of resampling rounding."""
    import timm.data

    model, processor = tiny
    data_config = timm.data.resolve_model_data_config(model.model.vision_tower)
    data_config.update(input_size=(3, 32, 32), crop_pct=1.0, crop_mode="squash")
    transform = timm.data.create_transform(**data_config, is_training=False)
    image = random_image(7, size=size)
    ours = processor(text=[chat(processor)], images=[[image]], return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(ours, transform(image), atol=2 / 255)
