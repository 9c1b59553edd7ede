"""What the training steps share: loading SigPhi, trainer defaults that suit the machine, and the TRL run.

Every step trains through TRL's `SFTTrainer` with the SigPhi processor as `processing_class`, so the
collator, checkpointing, `--resume_from_checkpoint`, logging (`report_to`) and multi-process training
(`accelerate launch`) are the libraries' own.
"""

import os
import platform
import types

import torch
from torch.nn import functional as F
from transformers import AutoModelForImageTextToText, AutoProcessor

import modeling  # noqa: F401  (registers SigPhi with the Auto classes)
from train.cli import InvalidInput

# LoRA on the decoder's attention and MLP projections only: `q_proj`-style names would also match
# the vision tower's attention, so the regex is anchored on `language_model` (PEFT: one string = a regex).
LANGUAGE_MODEL_LORA_TARGETS = r".*language_model.*\.(qkv_proj|o_proj|gate_up_proj|down_proj)"


def machine_defaults() -> dict:
    """Trainer defaults for this machine: bf16 only where a GPU supports it; loss on the answers only."""
    on_gpu = torch.cuda.is_available()
    return {
        "bf16": on_gpu and torch.cuda.is_bf16_supported(),
        "use_cpu": not on_gpu,
        "assistant_only_loss": True,
        "report_to": "tensorboard" if _tensorboard_installed() else "none",
        "logging_steps": 10,
        "save_strategy": "steps",
        "save_steps": 200,
        "save_total_limit": 2,
    }


COMPUTE_DTYPE_CHOICES = ["auto", "float32", "bfloat16", "float16"]
COMPUTE_DTYPE_HELP = ("Dtype the step computes in. 'auto': on a GPU, bfloat16 where supported; on a CPU, the "
                      "checkpoint's own dtype, except that a bfloat16/float16 checkpoint computes in float32 on a CPU "
                      "without native bfloat16 (AVX512-BF16/AMX, Arm BF16), where a bfloat16 matmul runs at about 1 %% "
                      "of float32 speed. Frozen weights keep their stored dtype in memory either way.")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bfloat16 natively (x86 AVX512-BF16 or AMX-BF16, Arm BF16); read off /proc/cpuinfo."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read()
        except OSError:
            return platform.system() == "Darwin" and platform.machine() == "arm64"  # Apple M2 and later: BF16
    flags = set()
    for line in cpuinfo.splitlines():
        if line.split(":")[0].strip() in ("flags", "Features"):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_compute_dtype(choice: str = "auto", stored_dtype: torch.dtype | None = None) -> torch.dtype:
    """The dtype a training step computes in: `choice`, or for 'auto' what this device runs fast (COMPUTE_DTYPE_HELP),
    given the dtype the checkpoint is stored in (`stored_dtype`, float32 when unknown)."""
    if choice != "auto":
        return getattr(torch, choice)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    stored = stored_dtype or torch.float32
    if stored in (torch.bfloat16, torch.float16):
        return torch.bfloat16 if stored == torch.bfloat16 and cpu_has_native_bf16() else torch.float32
    return stored


def checkpoint_dtype(path: str) -> torch.dtype | None:
    """The dtype a saved model folder (or Hub id) stores its weights in, read from its config; None if unknown."""
    from transformers import AutoConfig

    try:
        dtype = getattr(AutoConfig.from_pretrained(path, trust_remote_code=True), "dtype", None)
    except (OSError, ValueError):
        return None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else None


class _FrozenWeightLinear(torch.autograd.Function):
    """`F.linear` with a frozen weight stored in another dtype: cast per call, and only the stored weight is kept for
    backward (saving the cast copy would hold a full-precision copy of every layer until the backward pass)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad_output):
        (weight,) = ctx.saved_tensors
        return grad_output @ weight.to(grad_output.dtype), None, None


def _frozen_weight_linear_forward(self, x):
    return _FrozenWeightLinear.apply(x, self.weight, self.bias)


def compute_in(model: torch.nn.Module, dtype: torch.dtype):
    """Make `model` compute in `dtype` without a full-precision copy of its frozen layers; returns `restore()`.

    Every floating-point parameter and buffer is cast to `dtype`, except trainable float32 parameters (kept as
    float32 master weights) and the weights (and biases) of frozen `nn.Linear` layers, which keep their stored dtype
    and are cast one layer at a time inside the matmul. A bfloat16
    Phi-3-mini therefore trains its projector in float32 on a CPU in ~9 GB instead of ~17 GB. `restore()` puts every
    tensor back in its original dtype (call it before saving, so the checkpoint keeps its dtype) and undoes the patch.
    Call it after freezing: which layers count as frozen is read when it runs.
    """
    original = {}
    patched = []
    for module in model.modules():
        frozen_linear = (isinstance(module, torch.nn.Linear) and not module.weight.requires_grad
                         and (module.bias is None or not module.bias.requires_grad))
        if frozen_linear and module.weight.dtype != dtype and module.weight.is_floating_point():
            module.forward = types.MethodType(_frozen_weight_linear_forward, module)
            patched.append(module)
            continue
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            trained_in_fp32 = tensor.requires_grad and tensor.dtype == torch.float32  # fp32 master weights stay
            if tensor.is_floating_point() and tensor.dtype != dtype and not trained_in_fp32:
                original[(module, name)] = tensor.dtype
                tensor.data = tensor.data.to(dtype)

    def restore() -> None:
        for (module, name), old_dtype in original.items():
            tensor = getattr(module, name)
            tensor.data = tensor.data.to(old_dtype)
        for module in patched:
            del module.forward

    return restore


def quantization_config(quantization: str, compute_dtype: torch.dtype | None = None):
    """`BitsAndBytesConfig` for `--quantization`: NF4 4-bit with double quantization (QLoRA) or LLM.int8, None for
    'none'; 4-bit layers compute in `compute_dtype` (default: what `--compute_dtype auto` picks for a float32
    checkpoint on this device: bfloat16 on a GPU, float32 on a CPU)."""
    from transformers import BitsAndBytesConfig

    if quantization == "none":
        return None
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype or resolve_compute_dtype("auto", torch.float32))


def lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules: str = None,
                train_projector: bool = True):
    """Stage 2's `LoraConfig`: LoRA on the language model's projections, the projector trained fully."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=target_modules or LANGUAGE_MODEL_LORA_TARGETS, task_type="CAUSAL_LM",
                      modules_to_save=["multi_modal_projector"] if train_projector else None)


def _tensorboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def load_sigphi(path: str, **kwargs):
    """(model, processor) from a SigPhi folder (a saved one or a Hub id), through the Auto classes.

    A path that holds no model is invalid input (a one-line error, exit status 2): transformers reports missing
    folders, files and Hub repos as `OSError`, and a folder without `config.json` as a confusing `ValueError`.
    """
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise InvalidInput(f"{path}: no config.json, so not a saved model folder")
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True, **kwargs)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    except OSError as error:
        reason = str(error).splitlines()[0]
        raise InvalidInput(f"{path}: neither a model folder nor a reachable Hub repo ({reason})") from None
    return model, processor


def last_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` folder of a previous, interrupted run in `output_dir`, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def train_with_sft(model, processor, training_args, train_dataset, eval_dataset=None, before_save=None):
    """Run TRL's `SFTTrainer`, resuming from the last checkpoint when asked (`--resume_from_checkpoint true`
    or a path), and save the final model and processor to `training_args.output_dir` (calling `before_save()`
    first, if given: e.g. the `restore` of `compute_in`)."""
    from trl import SFTTrainer

    trainer = SFTTrainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processor)
    resume = training_args.resume_from_checkpoint
    if resume in ("true", "True", True):
        resume = last_checkpoint(training_args.output_dir)
    trainer.train(resume_from_checkpoint=resume)
    if before_save is not None:
        before_save()
    trainer.save_model(training_args.output_dir)
    return trainer
