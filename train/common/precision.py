"""Which dtype a step computes in, and computing in it without a full-precision copy of the frozen layers.

The bfloat16 decision for GPUs is made once, in `gpu_supports_bf16`; on a CPU, `cpu_has_native_bf16` decides
(a bfloat16 matmul without native support runs at about 1 % of float32 speed).
"""

import platform
import types

import torch
from torch.nn import functional as F

COMPUTE_DTYPE_CHOICES = ["auto", "float32", "bfloat16", "float16"]
COMPUTE_DTYPE_HELP = ("Dtype the step computes in. 'auto': on a GPU, bfloat16 where supported; on a CPU, the "
                      "checkpoint's own dtype, except that a bfloat16/float16 checkpoint computes in float32 on a CPU "
                      "without native bfloat16 (AVX512-BF16/AMX, Arm BF16), where a bfloat16 matmul runs at about 1 %% "
                      "of float32 speed. Frozen weights keep their stored dtype in memory either way.")


def gpu_supports_bf16() -> bool:
    """Whether training here runs in bfloat16: a GPU is present and supports it (trainers' `bf16`)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


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
        return torch.bfloat16 if gpu_supports_bf16() else torch.float32
    stored = stored_dtype or torch.float32
    if stored in (torch.bfloat16, torch.float16):
        return torch.bfloat16 if stored == torch.bfloat16 and cpu_has_native_bf16() else torch.float32
    return stored


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
