"""`trl sft` fine-tunes a saved SigPhi folder with no code of ours: full, LoRA (+ assistant-only loss), QLoRA."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from tests.conftest import write_digits_dataset
from train.sigphi.qlora import LANGUAGE_MODEL_LORA_TARGETS

TRL = os.path.join(os.path.dirname(sys.executable), "trl")


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory):
    return write_digits_dataset(tmp_path_factory.mktemp("trl-digits"), n_train=32)


def trl_sft(model_dir, data_dir, output_dir, *extra: str) -> subprocess.CompletedProcess:
    command = [TRL, "sft", "--model_name_or_path", str(model_dir), "--trust_remote_code", "--dataset_name",
               str(data_dir), "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none",
               "--save_strategy", "no", "--logging_steps", "1", "--use_cpu", "--output_dir", str(output_dir), *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=output_dir.parent,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_full_fine_tuning_writes_a_model_that_loads_and_has_learned(tiny_dir, tiny_digits, tmp_path):
    """README's full fine-tuning line (answers only), 8 steps: the logged loss must fall below 0.7 of its start
    (a random tiny model starts near ln(vocabulary) ≈ 6; the answers are a digit and <|end|>; measured: 5.97 →
    3.5, i.e. 0.59; a model that does not learn stays near 1.0)."""
    output = tmp_path / "full"
    result = trl_sft(tiny_dir, tiny_digits, output, "--assistant_only_loss", "--learning_rate", "3e-3",
                     "--max_steps", "8")
    losses = [float(json.loads(line.replace("'", '"'))["loss"]) for line in result.stdout.splitlines()
              if line.startswith("{'loss'")]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < 0.7 * losses[0], losses
    model = AutoModelForImageTextToText.from_pretrained(output, trust_remote_code=True)
    assert type(model).__name__ == "SigPhiForConditionalGeneration"
    before, after = load_file(tiny_dir / "model.safetensors"), load_file(output / "model.safetensors")
    assert any(not torch.equal(before[n], after[n]) for n in before if ".language_model." in n)


@pytest.mark.parametrize("extra", [["--assistant_only_loss"], ["--load_in_4bit"]], ids=["lora", "qlora"])
def test_peft_fine_tuning_targets_the_language_model(tiny_dir, tiny_digits, tmp_path, extra):
    output = tmp_path / "peft"
    trl_sft(tiny_dir, tiny_digits, output, "--use_peft", "--lora_target_modules", LANGUAGE_MODEL_LORA_TARGETS,
            "--lora_r", "4", *extra)
    names = list(load_file(output / "adapter_model.safetensors"))
    assert names and all(".language_model." in name for name in names)
