"""Real-size SigPhi on a CUDA GPU: QLoRA SFT steps (and bf16 LoRA for comparison) with random weights.

    python -m bench.gpu [--batch 4 --seq_len 1024 --steps 5] [--output bench/gpu_results.json]

SigLIP-SO400M/14@384 (timm `vit_so400m_patch14_siglip_384`, 729 image tokens) + Phi-3-mini-4k shapes, built
from configs on the GPU in bfloat16 (no download), saved as a folder and loaded back the way `train.sft` loads it:
NF4 4-bit decoder with double quantization and bf16 compute (`train.sigphi.qlora.quantization_config`), k-bit
preparation with gradient checkpointing, LoRA r=16 on the language model's projections and the projector trained
(`train.sigphi.qlora.lora_config`), AdamW, bf16 autocast (what `--bf16` does in the Trainer). Each row of a batch is
729 `<image>` tokens plus text up to `--seq_len` tokens, with labels on every text token. Reports peak GPU memory
(allocated and reserved by PyTorch) and the median step time.

Needs only torch, transformers (5.17 or later), timm, peft and bitsandbytes: no TRL or datasets, so it runs on a GPU
machine without network once bitsandbytes is installed from a wheel. Without bitsandbytes it measures the bf16 LoRA
path only and says why. On a machine without a GPU it says so and exits with status 0 (nothing measured);
`--device cpu --shapes tiny` runs the same code on tiny shapes (a check of this script, not a result).
"""

import argparse
import importlib.util
import json
import platform
import tempfile
import time

import torch

from bench.quantization import PHI3_MINI

SO400M = {"timm_model_name": "vit_so400m_patch14_siglip_384", "hidden_size": 1152, "image_size": 384,
          "timm_kwargs": {}}
TINY_VISION = {"timm_model_name": "vit_base_patch16_siglip_224", "hidden_size": 64, "image_size": 32,
               "timm_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}}
TINY_TEXT = {**PHI3_MINI, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 4}
IMAGE_TOKEN_ID = 32011  # what SigPhi's `<image>` gets with Phi-3's tokenizer


def build_folder(folder: str, shapes: str, device: str) -> dict:
    """Save a random-weight SigPhi of the given shapes in bf16 to `folder`; returns its config facts."""
    from transformers import Phi3Config

    from configuration import SigPhiConfig
    from modeling import SigPhiForConditionalGeneration

    vision, text = (SO400M, PHI3_MINI) if shapes == "real" else (TINY_VISION, TINY_TEXT)
    image_seq_length = (vision["image_size"] // (14 if shapes == "real" else 8)) ** 2
    config = SigPhiConfig(vision_config=vision, text_config=Phi3Config(**text, pad_token_id=32000,
                                                                       eos_token_id=32000),
                          image_token_id=IMAGE_TOKEN_ID, image_seq_length=image_seq_length)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = SigPhiForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder)
    facts = {"parameters": sum(p.numel() for p in model.parameters()), "image_seq_length": image_seq_length,
             "image_size": vision["image_size"]}
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return facts


def load_for_training(folder: str, mode: str, device: str):
    """The model as `train.sft` prepares it: `mode` 'qlora' (4-bit decoder) or 'lora_bf16' (bf16 decoder)."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForImageTextToText

    from modeling.transformers_compat import enable_activation_checkpointing
    from train.common.precision import compute_in
    from train.sigphi.qlora import lora_config, quantization_config

    device_map = {"": 0} if device == "cuda" else None
    if mode == "qlora":
        model = AutoModelForImageTextToText.from_pretrained(
            folder, quantization_config=quantization_config("4bit", torch.bfloat16), device_map=device_map)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
        return get_peft_model(model, lora_config())
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.bfloat16, device_map=device_map)
    enable_activation_checkpointing(model, {"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, lora_config())
    compute_in(model, torch.bfloat16)  # nothing to do for a bf16 folder; kept as train.sft does it
    return model


def step_stats(model, batch: int, seq_len: int, image_seq_length: int, image_size: int, steps: int,
               device: str) -> dict:
    """Median seconds per optimizer step and peak memory over `steps` steps (after one warm-up step)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(10, 32000, (batch, seq_len), generator=generator)
    input_ids[:, 1:1 + image_seq_length] = IMAGE_TOKEN_ID
    input_ids, attention_mask = input_ids.to(device), torch.ones(batch, seq_len, dtype=torch.long, device=device)
    pixel_values = torch.randn(batch, 3, image_size, image_size, generator=generator).to(device)
    on_gpu = device == "cuda"
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    model.train()
    times, losses = [], []
    for _ in range(steps + 1):
        if on_gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                         labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(round(loss.item(), 4))
    measured = sorted(times[1:])
    seconds = measured[len(measured) // 2]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = {"batch": batch, "seq_len": seq_len, "seconds_per_step": round(seconds, 3),
             "first_step_seconds": round(times[0], 3), "tokens_per_second": round(batch * seq_len / seconds),
             "losses": losses, "trainable_parameters": trainable}
    if on_gpu:
        stats["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        stats["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    return stats


def versions() -> dict:
    import peft
    import timm
    import transformers

    found = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
             "timm": timm.__version__, "python": platform.python_version()}
    if importlib.util.find_spec("bitsandbytes"):
        import bitsandbytes

        found["bitsandbytes"] = bitsandbytes.__version__
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="bench/gpu_results.json")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--modes", default="qlora,lora_bf16")
    parser.add_argument("--shapes", choices=["real", "tiny"], default="real")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing measured")
        return
    results = {"device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
               "versions": versions(), "shapes": args.shapes}
    modes = args.modes.split(",")
    if "qlora" in modes and "bitsandbytes" not in results["versions"]:
        results["qlora"] = {"skipped": "bitsandbytes is not installed: QLoRA needs it (pip install bitsandbytes)"}
        modes.remove("qlora")
    print(json.dumps(results), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        facts = build_folder(folder, args.shapes, args.device)
        results["model"] = {**facts, "build_and_save_seconds": round(time.perf_counter() - start, 1)}
        print(json.dumps(results["model"]), flush=True)
        for mode in modes:
            start = time.perf_counter()
            try:
                model = load_for_training(folder, mode, args.device)
                load_seconds = time.perf_counter() - start
                results[mode] = step_stats(model, args.batch, args.seq_len, facts["image_seq_length"],
                                           facts["image_size"], args.steps, args.device)
                results[mode]["load_seconds"] = round(load_seconds, 1)
            except torch.cuda.OutOfMemoryError as error:
                results[mode] = {"failed": f"out of GPU memory: {str(error).splitlines()[0]}"}
            print(mode, json.dumps(results[mode]), flush=True)
            model = None
            if args.device == "cuda":
                torch.cuda.empty_cache()
    with open(args.output, "w") as handle:
        json.dump(results, handle, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
