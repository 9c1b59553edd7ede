"""Building SigPhi: the tiny preset CLI, and real pretrained parts (made locally here, as a user's would be)."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, Phi3ForCausalLM

from modeling import SigPhiForConditionalGeneration
from tests.conftest import chat, random_image, write_pretrained_parts
from train.sigphi.tiny import TINY_VISION_MODEL

VISION_SHAPE = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}


@pytest.fixture(scope="module")
def pretrained_parts(tmp_path_factory):
    return write_pretrained_parts(tmp_path_factory.mktemp("parts"), TINY_VISION_MODEL, VISION_SHAPE)


def test_from_pretrained_components_keeps_every_pretrained_weight(pretrained_parts):
    vision_file = pretrained_parts / "siglip.safetensors"
    model, processor = SigPhiForConditionalGeneration.from_pretrained_components(
        vision_model=TINY_VISION_MODEL, text_model=str(pretrained_parts / "phi3"),
        vision_kwargs={**VISION_SHAPE, "pretrained_cfg_overlay": {"file": str(vision_file)}})
    phi3 = Phi3ForCausalLM.from_pretrained(pretrained_parts / "phi3")
    vision_weights = load_file(vision_file)

    for name, tensor in model.vision_tower.state_dict().items():
        assert torch.equal(tensor, vision_weights[name]), name
    assert not any(name.startswith(("attn_pool", "head")) for name in model.vision_tower.state_dict())
    text_weights = phi3.model.state_dict()
    for name, tensor in model.language_model.state_dict().items():
        if name != "embed_tokens.weight":
            assert torch.equal(tensor, text_weights[name]), name
    n_old = phi3.config.vocab_size
    # <image> was added and the embeddings grew by one row, the old rows untouched
    assert processor.image_token_id == n_old == model.config.image_token_id
    assert model.get_input_embeddings().num_embeddings == n_old + 1 == model.lm_head.out_features
    assert torch.equal(model.get_input_embeddings().weight[:n_old], phi3.model.embed_tokens.weight)
    assert torch.equal(model.lm_head.weight[:n_old], phi3.lm_head.weight)
    assert model.config.image_seq_length == processor.image_seq_length == 16
    assert model.config.vision_config.image_size == 32  # read off the model, not the 224 of the pretrained cfg


def test_model_built_from_parts_saves_and_reloads_exactly(pretrained_parts, tmp_path):
    model, processor = SigPhiForConditionalGeneration.from_pretrained_components(
        vision_model=TINY_VISION_MODEL, text_model=str(pretrained_parts / "phi3"),
        vision_kwargs={**VISION_SHAPE,
                       "pretrained_cfg_overlay": {"file": str(pretrained_parts / "siglip.safetensors")}})
    model.eval().save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    inputs = loaded_processor(text=[chat(loaded_processor)], images=[[random_image(0)]], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
        assert loaded.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] > inputs["input_ids"].shape[1]


def run_build_model(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.build_model", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_tiny_preset_writes_a_loadable_folder(tmp_path):
    result = run_build_model("--preset", "tiny", "--output_dir", str(tmp_path / "tiny"))
    assert result.returncode == 0, result.stderr[-2000:]
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "tiny")
    processor = AutoProcessor.from_pretrained(tmp_path / "tiny")
    assert isinstance(model, SigPhiForConditionalGeneration)
    # byte-level: any text, even unseen words and emoji, becomes known tokens
    ids = processor.tokenizer("Zwölf quokkas 🐍 xylograph")["input_ids"]
    assert ids and processor.tokenizer.unk_token_id not in ids
    assert processor.tokenizer.decode(ids) == "Zwölf quokkas 🐍 xylograph"


def test_cli_builds_from_local_pretrained_parts(pretrained_parts, tmp_path):
    result = run_build_model("--vision_model", TINY_VISION_MODEL, "--text_model", str(pretrained_parts / "phi3"),
                             "--vision_kwargs", '{"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, '
                             '"num_heads": 4}', "--vision_weights", str(pretrained_parts / "siglip.safetensors"),
                             "--output_dir", str(tmp_path / "parts"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert AutoModelForImageTextToText.from_pretrained(tmp_path / "parts").config.image_seq_length == 16


@pytest.mark.parametrize("args, message", [
    ((), "give --preset tiny, or both --vision_model and --text_model"),
    (("--vision_model", "x", "--text_model", "y", "--vision_kwargs", "{bad"), "--vision_kwargs is not valid JSON"),
    (("--vision_model", "x", "--text_model", "y", "--vision_weights", "/nonexistent.safetensors"),
     "--vision_weights: no such file /nonexistent.safetensors"),
])
def test_cli_refuses_bad_input_in_one_line_with_status_2(tmp_path, args, message):
    result = run_build_model(*args, "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
