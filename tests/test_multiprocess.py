"""Multi-process training through accelerate: two CPU processes (gloo) of the QLoRA SFT step reach the same losses
as one process with the same global batch.

On a machine without a GPU, `accelerate launch --multi_gpu` starts torchrun workers that use gloo (`--cpu` alone
starts a single process). LoRA dropout is off so both runs draw the same random numbers; what remains is float
summation order across batch shapes and processes, through 4-bit dequantisation — hence the 1 % tolerance.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_digits_dataset

ACCELERATE = os.path.join(os.path.dirname(sys.executable), "accelerate")
GLOBAL_BATCH, STEPS = 8, 6
LOSS_TOLERANCE = 0.01  # relative


@pytest.fixture(scope="module")
def digits64(tmp_path_factory):
    return write_digits_dataset(tmp_path_factory.mktemp("digits64"), n_train=64)


def free_port() -> int:
    """A free local port for the processes to meet on (other test runs may share this machine)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sft_losses(launcher: list[str], model_dir, dataset, output_dir: Path, per_device_batch: int) -> list[float]:
    """Train `STEPS` QLoRA steps with `launcher` and return the logged loss of every step."""
    command = [*launcher, "-m", "train.sft", "--model_name_or_path", str(model_dir), "--dataset", str(dataset),
               "--output_dir", str(output_dir), "--quantization", "4bit", "--lora_r", "4", "--lora_dropout", "0",
               "--per_device_train_batch_size", str(per_device_batch), "--max_steps", str(STEPS),
               "--learning_rate", "1e-2", "--seed", "0", "--logging_steps", "1", "--report_to", "none",
               "--save_strategy", "steps", "--save_steps", str(STEPS), "--save_only_model", "true"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((output_dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.multiprocess
def test_two_processes_train_like_one_with_the_same_global_batch(tiny_dir, digits64, tmp_path):
    one = sft_losses([sys.executable], tiny_dir, digits64, tmp_path / "one", GLOBAL_BATCH)
    two = sft_losses([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                      "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())],
                     tiny_dir, digits64, tmp_path / "two", GLOBAL_BATCH // 2)
    assert len(one) == len(two) == STEPS
    assert two[0] == pytest.approx(one[0], rel=1e-5)  # the same first batch, before any update
    assert two == pytest.approx(one, rel=LOSS_TOLERANCE)
