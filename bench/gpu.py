"""Real-size SigPhi on a CUDA GPU: a QLoRA SFT step (and bf16 LoRA for comparison) with random weights.

    python -m bench.gpu [--output bench/gpu_results.json]

SigLIP-SO400M/14@384 (timm `vit_so400m_patch14_siglip_384`) + Phi-3-mini shapes, built from configs only
(no download), batch 1 x (729 image + 128 text tokens). Reports peak GPU memory and tokens/s. Needs CUDA
and bitsandbytes; on a machine without a GPU it says so and exits with status 0 (nothing measured).
"""

import argparse
import json
import tempfile
import time

import torch

from bench.quantization import PHI3_MINI

SO400M = {"timm_model_name": "vit_so400m_patch14_siglip_384", "hidden_size": 1152, "image_size": 384,
          "timm_kwargs": {}}


def _step_stats(model, steps: int = 5) -> dict:
    from peft import LoraConfig, get_peft_model

    from train.training import LANGUAGE_MODEL_LORA_TARGETS

    model = get_peft_model(model, LoraConfig(r=16, target_modules=LANGUAGE_MODEL_LORA_TARGETS,
                                             modules_to_save=["multi_modal_projector"]))
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokens = 729 + 128
    input_ids = torch.randint(10, 32000, (1, tokens), device="cuda")
    input_ids[:, 1:730] = model.config.image_token_id
    pixel_values = torch.randn(1, 3, 384, 384, device="cuda", dtype=torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model(input_ids=input_ids, pixel_values=pixel_values, labels=input_ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = sorted(times[1:])[len(times[1:]) // 2]
    return {"seconds_per_step": seconds, "tokens_per_second": tokens / seconds,
            "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2 ** 30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="bench/gpu_results.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing measured")
        return
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig, Phi3Config

    from configuration import SigPhiConfig
    from modeling import SigPhiForConditionalGeneration

    config = SigPhiConfig(vision_config=SO400M, text_config=Phi3Config(**PHI3_MINI, pad_token_id=32000),
                          image_token_id=32011, image_seq_length=729)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as folder:
        SigPhiForConditionalGeneration(config).to(torch.bfloat16).save_pretrained(folder)
        qlora = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.bfloat16, device_map="cuda",
                                                            quantization_config=BitsAndBytesConfig(
                                                                load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                                bnb_4bit_compute_dtype=torch.bfloat16))
        results["qlora_4bit"] = _step_stats(qlora)
        del qlora
        torch.cuda.empty_cache()
        bf16 = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.bfloat16, device_map="cuda")
        results["lora_bf16"] = _step_stats(bf16)
    with open(args.output, "w") as handle:
        json.dump(results, handle, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
