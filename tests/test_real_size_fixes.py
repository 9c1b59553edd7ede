"""Regression tests, on tiny shapes, for what broke when README's recipe first ran at real size (bench.real_size).

- dtype per device: a bfloat16 checkpoint computed in bfloat16 on a CPU without native bfloat16 (~1 % of float32
  speed); `--compute_dtype auto` now picks float32 there and keeps the checkpoint's dtype elsewhere;
- memory: computing a bf16 model in float32 by upcasting it needs a second, float32 copy (17 GB for Phi-3-mini);
  `compute_in` keeps frozen bf16 weights bf16 and casts one layer at a time, and saves no float32 copies for backward;
- the aligned checkpoint keeps its dtype (a float32-computed align must not write a float32 folder);
- merging writes the base's dtype by default instead of a float32 detour (twice the size).
"""

import json
import subprocess
import sys

import pytest
import torch

import train.common.precision as precision
from tests.conftest import write_digits_dataset
from train.common.precision import compute_in, resolve_compute_dtype
from train.sigphi.loading import checkpoint_dtype
from train.sigphi.qlora import quantization_config
from train.sigphi.tiny import build_tiny_sigphi

CPUINFO_WITH_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
CPUINFO_WITHOUT_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
STEP_FLAGS = ["--per_device_train_batch_size", "4", "--report_to", "none", "--logging_steps", "1",
              "--save_strategy", "no", "--max_steps", "2"]


def safetensors_dtypes(folder) -> set[str]:
    dtypes = set()
    for file in folder.glob("*.safetensors"):
        with open(file, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        dtypes |= {entry["dtype"] for key, entry in header.items() if key != "__metadata__"}
    return dtypes


def run_step(step: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", f"train.{step}", *args], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"train.{step} failed:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory):
    """A tiny SigPhi saved in bfloat16, as `train.build_model --dtype bfloat16` writes a real one."""
    path = tmp_path_factory.mktemp("tiny-bf16")
    model, processor = build_tiny_sigphi(seed=0)
    model.to(torch.bfloat16).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits_dataset(tmp_path_factory.mktemp("digits"), n_train=16)


def test_native_bf16_is_read_from_the_cpu_flags():
    assert precision.cpu_has_native_bf16(CPUINFO_WITH_BF16)
    assert precision.cpu_has_native_bf16("Features\t: fp asimd bf16 i8mm\n")  # Arm
    assert not precision.cpu_has_native_bf16(CPUINFO_WITHOUT_BF16)


@pytest.mark.parametrize("native, stored, expected", [
    (False, torch.bfloat16, torch.float32),   # the fix: no bf16 compute where bf16 is ~1 % of fp32 speed
    (True, torch.bfloat16, torch.bfloat16),   # where the CPU has it, the checkpoint's bf16 is the fast choice
    (False, torch.float32, torch.float32),    # tiny float32 checkpoints compute as they are stored
    (True, torch.float32, torch.float32),
    (False, torch.float16, torch.float32),
])
def test_auto_compute_dtype_on_a_cpu(monkeypatch, native, stored, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda cpuinfo=None: native)
    assert resolve_compute_dtype("auto", stored) == expected
    assert resolve_compute_dtype("bfloat16", stored) == torch.bfloat16


def test_4bit_layers_compute_in_float32_on_a_cpu_without_native_bf16(bf16_dir, monkeypatch):
    """The real-size QLoRA load on such a CPU: the bf16 checkpoint's 4-bit layers compute in fp32."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    dtype = resolve_compute_dtype("auto", checkpoint_dtype(str(bf16_dir)))
    assert dtype == torch.float32
    assert quantization_config("4bit", dtype).bnb_4bit_compute_dtype == torch.float32


def test_checkpoint_dtype_is_read_from_the_folder(bf16_dir, tmp_path):
    assert checkpoint_dtype(str(bf16_dir)) == torch.bfloat16
    assert checkpoint_dtype(str(tmp_path / "missing")) is None


def test_compute_in_float32_keeps_frozen_bf16_weights_and_saves_no_float32_copy_of_them(bf16_dir):
    """Stage 1 on a CPU without bf16: float32 compute, yet the frozen layers stay bf16 in memory and autograd
    saves the bf16 weights, not float32 casts (which would bring back the float32 copy of the whole decoder)."""
    from train.sigphi.loading import load_sigphi

    model, processor = load_sigphi(str(bf16_dir))
    model.freeze_vision_tower()
    model.freeze_language_model()
    frozen_weights = {id(m.weight): m.weight.shape for m in model.modules()
                      if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad}
    restore = compute_in(model, torch.float32)
    assert model.model.language_model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.multi_modal_projector.linear_1.weight.dtype == torch.float32

    saved_float32 = []
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    frozen_shapes = {tuple(shape) for shape in frozen_weights.values()}

    def pack(tensor):  # a float32 tensor shaped like a frozen weight that is no parameter is a cast copy
        if (tensor.dtype == torch.float32 and {tuple(tensor.shape), tuple(tensor.shape[::-1])} & frozen_shapes
                and tensor.untyped_storage().data_ptr() not in parameter_storages):
            saved_float32.append(tuple(tensor.shape))
        return tensor

    input_ids = torch.full((1, 24), 100)
    input_ids[0, 1:1 + model.config.image_seq_length] = model.config.image_token_id
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(input_ids=input_ids, pixel_values=torch.randn(1, 3, 32, 32), labels=input_ids)
    assert output.logits.dtype == torch.float32
    output.loss.backward()
    assert model.multi_modal_projector.linear_1.weight.grad is not None
    assert saved_float32 == []

    restore()
    assert model.multi_modal_projector.linear_1.weight.dtype == torch.bfloat16
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert "forward" not in vars(model.lm_head)


def test_align_in_float32_writes_the_checkpoint_dtype(bf16_dir, digits, tmp_path):
    result = run_step("align", "--model_name_or_path", str(bf16_dir), "--dataset", str(digits), "--output_dir",
                      str(tmp_path), "--compute_dtype", "float32", *STEP_FLAGS)
    assert "compute dtype: float32" in result.stdout
    assert safetensors_dtypes(tmp_path) == {"BF16"}


def test_merge_writes_the_base_dtype_by_default(bf16_dir, digits, tmp_path):
    """No float32 detour: a bf16 base merges into a bf16 folder without `--dtype` (the default was float32)."""
    from train.merge_lora import merge_lora

    adapter = tmp_path / "sft"
    run_step("sft", "--model_name_or_path", str(bf16_dir), "--dataset", str(digits), "--quantization", "4bit",
             "--output_dir", str(adapter), *STEP_FLAGS)
    merge_lora(str(adapter), str(tmp_path / "merged"))
    assert safetensors_dtypes(tmp_path / "merged") == {"BF16"}


@pytest.mark.parametrize("step", ["align", "sft"])
def test_compute_dtype_flag_is_documented_in_help(step):
    result = run_step(step, "--help")
    assert "--compute_dtype {auto,float32,bfloat16,float16}" in result.stdout
