"""Image-token reduction (pixel shuffle by r): the layout of the shuffled features, the token counts the processor
emits, odd grids such as the real model's 27×27, old configs, and r = 2, 3 folders in a Hub user's process."""

import json

import pytest
import torch

from configuration import SigPhiConfig, reduced_image_seq_length
from modeling.modeling_sigphi import pixel_shuffle
from tests.conftest import chat, hub_user_python, random_image
from train.sigphi.tiny import build_tiny_sigphi


def test_pixel_shuffle_puts_each_2x2_block_of_patches_side_by_side_and_pads_an_odd_grid_with_zeros():
    grid = torch.arange(1, 10, dtype=torch.float32).reshape(1, 9, 1)  # a 3×3 grid, patch (row, col) = 3*row+col+1
    shuffled = pixel_shuffle(grid, 2)  # padded to 4×4: blocks (0,0) (0,1) (1,0) (1,1), each row-major inside
    assert shuffled.tolist() == [[[1, 2, 4, 5], [3, 0, 6, 0], [7, 8, 0, 0], [9, 0, 0, 0]]]


def test_pixel_shuffle_by_one_changes_nothing():
    features = torch.randn(2, 16, 5)
    assert pixel_shuffle(features, 1) is features


@pytest.mark.parametrize(("num_patches", "factor", "tokens"), [(729, 1, 729), (729, 2, 196), (729, 3, 81),
                                                               (16, 2, 4), (16, 3, 4), (1, 2, 1)])
def test_reduced_sequence_length(num_patches, factor, tokens):
    assert reduced_image_seq_length(num_patches, factor) == tokens


def test_a_config_saved_before_the_option_existed_reads_as_one_token_per_patch():
    model, _ = build_tiny_sigphi(seed=0)
    saved = model.config.to_dict()
    del saved["image_token_reduction"]
    assert SigPhiConfig(**saved).image_token_reduction == 1


def test_a_reduction_below_one_is_refused():
    with pytest.raises(ValueError, match="image_token_reduction must be an integer >= 1"):
        SigPhiConfig(image_token_reduction=0)


@pytest.mark.parametrize("img_size", [32, 216], ids=["4x4-grid", "27x27-grid"])
@pytest.mark.parametrize("factor", [1, 2, 3])
def test_the_processor_emits_one_placeholder_per_reduced_token_and_the_model_fills_them(img_size, factor):
    model, processor = build_tiny_sigphi(seed=0, vision_kwargs={"img_size": img_size}, image_token_reduction=factor)
    grid = img_size // 8
    expected = (-(-grid // factor)) ** 2
    inputs = processor(text=[chat(processor)], images=[[random_image(0)]], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == expected == processor.image_seq_length
    assert model.model.multi_modal_projector.linear_1.in_features == model.config.vision_config.hidden_size * factor**2
    with torch.no_grad():
        out = model.eval()(**inputs)
    assert out.image_hidden_states.shape == (1, expected, model.config.text_config.hidden_size)


RELOAD = """
import sys, json, torch
from transformers import AutoModelForImageTextToText, AutoProcessor
folder = sys.argv[1]
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
inputs = torch.load(folder + "/../inputs.pt")
with torch.no_grad():
    logits = model(**inputs).logits
image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
print(json.dumps({"max_difference": float((logits - torch.load(folder + "/../logits.pt")).abs().max()),
                  "image_tokens": image_tokens, "processor_tokens": processor.image_seq_length,
                  "reduction": model.config.image_token_reduction}))
"""


@pytest.mark.parametrize("factor", [2, 3])
def test_reduced_models_round_trip_through_a_hub_users_process_with_identical_logits(factor, tmp_path):
    model, processor = build_tiny_sigphi(seed=3, vision_kwargs={"img_size": 216}, image_token_reduction=factor)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    inputs = dict(processor(text=[chat(processor)], images=[[random_image(1)]], return_tensors="pt"))
    with torch.no_grad():
        torch.save(model.eval()(**inputs).logits, tmp_path / "logits.pt")
    torch.save(inputs, tmp_path / "inputs.pt")
    result = hub_user_python(RELOAD, str(folder), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    tokens = reduced_image_seq_length(27 * 27, factor)
    assert report == {"max_difference": 0.0, "image_tokens": tokens, "processor_tokens": tokens, "reduction": factor}
