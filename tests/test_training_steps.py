"""The training steps end to end on tiny data: alignment, QLoRA SFT, merging, evaluation, resuming."""

import json
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import hub_user_python, stop_after_checkpoint, write_digits_dataset
from train.common.vqa_data import load_conversations

STEP_FLAGS = ["--per_device_train_batch_size", "8", "--report_to", "none", "--logging_steps", "1",
              "--save_strategy", "no"]


@pytest.fixture(scope="module")
def small_digits(tmp_path_factory):
    """64 training and 16 test digits in the bundled format."""
    return write_digits_dataset(tmp_path_factory.mktemp("small-digits"), n_train=64, n_test=16)


def run_step(step: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", f"train.{step}", *args], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"train.{step} failed:\n{result.stderr[-3000:]}"
    return result


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def aligned(tiny_dir, small_digits, tmp_path_factory):
    output = tmp_path_factory.mktemp("aligned")
    run_step("align", "--model_name_or_path", str(tiny_dir), "--dataset", str(small_digits), "--output_dir",
             str(output), "--max_steps", "3", "--learning_rate", "1e-2", *STEP_FLAGS)
    return output


def test_alignment_trains_the_projector_and_nothing_else(tiny_dir, aligned):
    before, after = weights(tiny_dir), weights(aligned)
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("model.multi_modal_projector.") for name in changed)
    assert {"processor_config.json", "chat_template.jinja", "modeling_sigphi.py"} <= {
        p.name for p in aligned.iterdir()}


@pytest.fixture(scope="module")
def qlora_adapter(aligned, small_digits, tmp_path_factory):
    output = tmp_path_factory.mktemp("qlora")
    result = run_step("sft", "--model_name_or_path", str(aligned), "--dataset", str(small_digits), "--output_dir",
                      str(output), "--quantization", "4bit", "--max_steps", "3", "--learning_rate", "1e-2",
                      "--lora_r", "4", *STEP_FLAGS)
    assert "stage 2: 4bit decoder" in result.stdout
    return output


def test_qlora_sft_saves_an_adapter_for_the_language_model_and_the_projector(qlora_adapter, aligned):
    config = json.loads((qlora_adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(aligned)
    assert config["modules_to_save"] == ["multi_modal_projector"]
    names = load_file(qlora_adapter / "adapter_model.safetensors").keys()
    lora = [n for n in names if "lora_" in n]
    assert lora and all(".language_model." in n for n in lora)
    assert any("multi_modal_projector" in n for n in names)


def test_merged_model_loads_in_a_hub_users_process_and_keeps_the_training(qlora_adapter, aligned, small_digits,
                                                                          tmp_path):
    merged = tmp_path / "merged"
    run_step("merge_lora", "--adapter", str(qlora_adapter), "--output_dir", str(merged))
    before, after = weights(aligned), weights(merged)
    assert before.keys() == after.keys()  # a plain SigPhi checkpoint: no lora or modules_to_save names left
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert any(".language_model.layers." in n for n in changed)
    assert any("multi_modal_projector" in n for n in changed)
    assert not any("vision_tower" in n for n in changed)
    script = """
        import sys, torch
        from transformers import AutoModelForImageTextToText
        model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True)
        print(type(model).__name__, sum(p.numel() for p in model.parameters()))
    """
    result = hub_user_python(script, str(merged), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[0] == "SigPhiForConditionalGeneration"


@pytest.mark.parametrize("quantization", ["none", "8bit"])
def test_sft_quantization_switch(aligned, small_digits, tmp_path, quantization):
    result = run_step("sft", "--model_name_or_path", str(aligned), "--dataset", str(small_digits),
                      "--output_dir", str(tmp_path), "--quantization", quantization, "--max_steps", "1",
                      "--lora_r", "4", *STEP_FLAGS)
    assert f"stage 2: {quantization} decoder" in result.stdout
    assert (tmp_path / "adapter_model.safetensors").exists()


def test_training_killed_mid_run_resumes_to_the_same_weights_as_an_uninterrupted_run(tiny_dir, small_digits,
                                                                                      tmp_path):
    def align_command(output_dir, *extra):
        return [sys.executable, "-m", "train.align", "--model_name_or_path", str(tiny_dir), "--dataset",
                str(small_digits), "--output_dir", str(output_dir), "--per_device_train_batch_size", "8",
                "--report_to", "none", "--seed", "0", "--learning_rate", "1e-2", "--max_steps", "30",
                "--save_strategy", "steps", "--save_steps", "3", *extra]

    interrupted = tmp_path / "interrupted"
    stop_after_checkpoint(align_command(interrupted), interrupted, step=3, stop_signal=signal.SIGKILL)
    assert not (interrupted / "model.safetensors").exists(), "the run finished before it was killed"
    subprocess.run(align_command(interrupted, "--resume_from_checkpoint", "true"), check=True, capture_output=True)
    subprocess.run(align_command(tmp_path / "straight"), check=True, capture_output=True)

    resumed, straight = weights(interrupted), weights(tmp_path / "straight")
    projector = [n for n in straight if "multi_modal_projector" in n]
    assert all(torch.allclose(resumed[n], straight[n], atol=1e-5) for n in projector)
    assert not all(torch.equal(resumed[n], weights(tiny_dir)[n]) for n in projector)


def test_evaluation_counts_exact_matches_after_normalisation(tiny, small_digits):
    from train.sigphi.evaluation import evaluate_sigphi, normalise

    model, processor = tiny
    dataset = load_conversations(small_digits, "test").select(range(6))
    result = evaluate_sigphi(model, processor, dataset, batch_size=4, max_new_tokens=3)
    assert result["n"] == 6 and len(result["samples"]) == 6
    # the random model's own answers, used as the expected ones, must all count as correct
    own = dataset.map(lambda row, i: {"messages": [row["messages"][0], {"role": "assistant", "content": [
        {"type": "text", "text": result["samples"][i][2].upper() + "."}]}]}, with_indices=True)
    assert evaluate_sigphi(model, processor, own, batch_size=4, max_new_tokens=3)["accuracy"] == 1.0
    assert result["accuracy"] == sum(normalise(a) == normalise(e) for _, e, a in result["samples"]) / 6
    assert normalise("  Seven. ") == "seven"


def test_steps_refuse_bad_input_with_status_2(tiny_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "train.align", "--model_name_or_path", str(tiny_dir),
                             "--dataset", str(tmp_path / "missing.csv"), "--output_dir", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "missing.csv: no such file" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("argv, expected", [([], {"train.align": False, "train.sft": True}),
                                            (["--gradient_checkpointing", "true"], {"train.align": True}),
                                            (["--gradient_checkpointing", "false"], {"train.sft": False})])
def test_steps_take_checkpointing_flags_under_either_name_without_trainer_warnings(argv, expected):
    """The steps' own defaults (align: off, sft: TRL's on) and a user's `--gradient_checkpointing` (the name every
    supported transformers knows) both take effect, and building the trainer arguments warns about nothing the user
    did not write (transformers 5.24 warns when only the old name is set, as TRL's default does)."""
    import warnings

    from trl import SFTConfig

    from train.align import ALIGN_DEFAULTS, AlignArguments
    from train.common.cli import run_cli
    from train.sft import SFT_DEFAULTS, SFTArguments

    steps = {"train.align": (AlignArguments, ALIGN_DEFAULTS), "train.sft": (SFTArguments, SFT_DEFAULTS)}
    for step, checkpointing in expected.items():
        arguments, defaults = steps[step]
        seen = {}
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            run_cli(lambda args, training_args: seen.update(on=training_args.gradient_checkpointing,
                                                            pin=training_args.dataloader_pin_memory),
                    arguments, SFTConfig, defaults=defaults,
                    argv=["--model_name_or_path", "m", "--dataset", "d", "--output_dir", "o", *argv])
        assert seen == {"on": checkpointing, "pin": torch.cuda.is_available()}, step
