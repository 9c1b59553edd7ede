"""Image-token reduction: SigPhi with pixel shuffle r = 1, 2, 3 against Llava at identical towers and decoder.

The image grid is the real model's, 27×27 = 729 patches (a benchmark-width SigLIP ViT at 378 px / patch 14, as
SigLIP-SO400M/14@384 has after its 384 → 378 crop of the grid), 64 text tokens: the decoder's work is dominated by
image tokens, which is what r removes (729 → 196 → 81). Measured in one process per model, interleaved over two
rounds (best kept): a training step (fp32, AdamW, batch 2), time to first token and decode tokens/s (batch 1,
greedy), and peak RSS of the training process. At the real size (SigLIP-SO400M + Phi-3-mini), forward FLOPs are
counted by `torch.utils.flop_counter` on the meta device (no weights, no time).

    python -m bench.token_reduction --quick     # or through `python -m bench.run --sections token_reduction`
    python -m bench.token_reduction --flops_only   # the real-size FLOP count alone
"""

import math
import statistics

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlavaConfig, LlavaForConditionalGeneration, Phi3Config, SiglipVisionConfig

from bench.measure import median_seconds, run_isolated, seconds
from bench.models import BenchShape, batch, build_llava, build_sigphi

FACTORS = (1, 2, 3)
REAL_GRID = BenchShape("27x27 grid", 378, 14, 384, 6, 6, 768, 6, 12, 2048, 32064, 2, 64)
QUICK_GRID = BenchShape("27x27 grid, narrow", 378, 14, 128, 2, 4, 256, 2, 4, 768, 4096, 2, 64)
TARGETS = {"train_step": 0.5, "time_to_first_token": 0.5}  # at r = 2, as a fraction of Llava's time
# SigLIP-SO400M/14@384 (timm vit_so400m_patch14_siglip_384) and Phi-3-mini-4k-instruct.
SO400M = {"width": 1152, "depth": 27, "heads": 16, "mlp": 4304, "image_size": 384, "patch": 14}
PHI3_MINI = {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32064}


def build(model_name: str, shape: BenchShape):
    """'llava', or 'sigphi-r{r}': the same towers and decoder; SigPhi's projector shuffles by r."""
    if model_name == "llava":
        return build_llava(shape), shape.image_tokens
    factor = int(model_name.removeprefix("sigphi-r"))
    model = build_sigphi(shape, image_token_reduction=factor)
    return model, model.config.image_seq_length


def measure(model_name: str, shape: BenchShape, repeats: int, new_tokens: int) -> dict:
    """Seconds per training step, time to first token, decode tokens/s of one model (run in its own process)."""
    torch.manual_seed(0)
    model, image_tokens = build(model_name, shape)
    train_inputs = batch(shape, image_tokens=image_tokens)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def train_step():
        model(**train_inputs, labels=train_inputs["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    step = median_seconds(train_step, repeats, warmup=1)
    model.eval()
    prompt = batch(shape, batch_size=1, image_tokens=image_tokens)

    def generate(n: int):
        with torch.no_grad():
            model.generate(**prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    generate(new_tokens)  # warm-up
    firsts, decodes = [], []
    for _ in range(repeats):  # paired: each answer's decode time is its own length minus a neighbouring 1-token run
        firsts.append(seconds(lambda: generate(1)))
        decodes.append(seconds(lambda: generate(new_tokens)) - firsts[-1])
    decode = statistics.median(decodes)
    return {"model": model_name, "image_tokens": image_tokens, "sequence_length": image_tokens + shape.text_tokens,
            "train_step_seconds": step, "time_to_first_token_seconds": statistics.median(firsts),
            "decode_tokens_per_second": (new_tokens - 1) / decode if decode > 0 else float("nan")}


def forward_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def real_size_flops(text_tokens: int = 64) -> dict:
    """Forward FLOPs of one image + `text_tokens` at SigLIP-SO400M + Phi-3-mini size, counted on the meta device.

    Counted in two parts, image features (tower + projector) and the decoder over the whole sequence, because the
    merge in between reads data (`.item()`) that meta tensors do not have, and with the decoder's causal mask given
    as a 4D tensor for the same reason; the LM head is left out (the same for every model when only the last
    position's logits are computed)."""
    shape = BenchShape("real", SO400M["image_size"], SO400M["patch"], SO400M["width"], SO400M["depth"],
                       SO400M["heads"], PHI3_MINI["hidden_size"], PHI3_MINI["num_hidden_layers"],
                       PHI3_MINI["num_attention_heads"], PHI3_MINI["intermediate_size"], PHI3_MINI["vocab_size"], 1,
                       text_tokens)
    phi3 = Phi3Config(**PHI3_MINI, pad_token_id=0)
    flops = {}
    with torch.device("meta"):
        pixels = torch.empty(1, 3, shape.image_size, shape.image_size)
        for name in ("llava", *(f"sigphi-r{r}" for r in FACTORS)):
            if name == "llava":
                vision = SiglipVisionConfig(hidden_size=SO400M["width"], intermediate_size=SO400M["mlp"],
                                            num_hidden_layers=SO400M["depth"], num_attention_heads=SO400M["heads"],
                                            image_size=SO400M["image_size"], patch_size=SO400M["patch"],
                                            vision_use_head=False)
                model = LlavaForConditionalGeneration(LlavaConfig(
                    vision_config=vision, text_config=phi3, vision_feature_layer=-1,
                    vision_feature_select_strategy="full", image_token_id=PHI3_MINI["vocab_size"] - 1,
                    image_seq_length=shape.image_tokens))
                image_tokens = shape.image_tokens
            else:
                model = build_sigphi(shape, image_token_reduction=int(name.removeprefix("sigphi-r")),
                                     mlp_ratio=SO400M["mlp"] / SO400M["width"], text=phi3)
                image_tokens = model.config.image_seq_length
            image_part = forward_flops(lambda: model.model.get_image_features(pixel_values=pixels))
            length = image_tokens + text_tokens
            embeds = torch.empty(1, length, PHI3_MINI["hidden_size"])
            causal = torch.empty(1, 1, length, length)  # a 4D mask as given: nothing to build from data
            decoder_part = forward_flops(lambda: model.model.language_model(
                inputs_embeds=embeds, attention_mask=causal, position_ids=torch.arange(length)[None], use_cache=False))
            flops[name] = {"image_tokens": image_tokens, "image_features_flops": image_part,
                           "decoder_flops": decoder_part, "forward_flops": image_part + decoder_part}
    for name in flops:
        flops[name]["ratio_to_llava"] = flops[name]["forward_flops"] / flops["llava"]["forward_flops"]
    return flops


def run(quick: bool = False, repeats: int = 3, new_tokens: int = 32, rounds: int = 2) -> dict:
    shape = QUICK_GRID if quick else REAL_GRID
    names = ("llava", *(f"sigphi-r{r}" for r in FACTORS))
    results: dict[str, dict] = {}
    for _ in range(rounds):
        for name in names:
            result = run_isolated(measure, name, shape, repeats, new_tokens)
            best = results.get(name)
            if best is None:
                results[name] = result
                continue
            for key in ("train_step_seconds", "time_to_first_token_seconds"):
                best[key] = min(best[key], result[key])
            best["decode_tokens_per_second"] = max(best["decode_tokens_per_second"], result["decode_tokens_per_second"],
                                                   key=lambda speed: -1.0 if math.isnan(speed) else speed)
            best["peak_rss_mb"] = min(best["peak_rss_mb"], result["peak_rss_mb"])
    llava = results["llava"]
    for result in results.values():
        result["train_step_ratio"] = result["train_step_seconds"] / llava["train_step_seconds"]
        result["time_to_first_token_ratio"] = (result["time_to_first_token_seconds"]
                                               / llava["time_to_first_token_seconds"])
        result["decode_speed_ratio"] = result["decode_tokens_per_second"] / llava["decode_tokens_per_second"]
        result["peak_rss_ratio"] = result["peak_rss_mb"] / llava["peak_rss_mb"]
    return {"shape": shape.__dict__, "repeats": repeats, "rounds": rounds, "new_tokens": new_tokens,
            "models": results, "real_size_flops": real_size_flops()}


def report_section(results: dict) -> list[str]:
    """The BENCHMARKS.md section of `run`'s results."""
    section = results["token_reduction"]
    shape = section["shape"]
    lines = [f"## 8. Image-token reduction (pixel shuffle r) against Llava, {shape['image_size']} px / patch "
             f"{shape['patch_size']} = 27×27 grid", "",
             f"Towers and decoder identical (ViT {shape['vision_width']}×{shape['vision_depth']}, Phi-3 "
             f"{shape['text_width']}×{shape['text_depth']}, vocabulary {shape['vocab_size']:,}), one image + "
             f"{shape['text_tokens']} text tokens; training batch {shape['batch_size']}, generation batch 1; each "
             f"model in its own process, {section['rounds']} interleaved rounds, best kept. Ratios are to Llava in "
             "the same run (lower is better for time and memory, higher for decode speed).", "",
             "| model | image tokens | train step (s) | ratio | time to first token (s) | ratio | decode tokens/s "
             "| ratio | peak RSS (MB) | ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in section["models"].items():
        lines.append(f"| {name} | {row['image_tokens']} | {row['train_step_seconds']:.3f} | "
                     f"{row['train_step_ratio']:.2f} | {row['time_to_first_token_seconds']:.3f} | "
                     f"{row['time_to_first_token_ratio']:.2f} | {row['decode_tokens_per_second']:.1f} | "
                     f"{row['decode_speed_ratio']:.2f} | {row['peak_rss_mb']:.0f} | {row['peak_rss_ratio']:.2f} |")
    r2 = section["models"]["sigphi-r2"]
    verdicts = [f"{label} {r2[key]:.2f}× Llava (target ≤ {TARGETS[target]}: "
                f"{'met' if r2[key] <= TARGETS[target] else '**missed**'})"
                for label, key, target in (("train step", "train_step_ratio", "train_step"),
                                           ("time to first token", "time_to_first_token_ratio",
                                            "time_to_first_token"))]
    lines += ["", "At r = 2: " + "; ".join(verdicts) + ".", "",
              "Forward FLOPs at the real size (SigLIP-SO400M/14@384 + Phi-3-mini, one image + 64 text tokens, "
              "`torch.utils.flop_counter` on the meta device):", "",
              "| model | image tokens | forward GFLOPs | ratio to Llava |", "|---|---|---|---|"]
    for name, row in section["real_size_flops"].items():
        lines.append(f"| {name} | {row['image_tokens']} | {row['forward_flops'] / 1e9:,.0f} | "
                     f"{row['ratio_to_llava']:.2f} |")
    return lines + [""]


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--flops_only", action="store_true", help="only the real-size FLOP count (seconds, any load)")
    args = parser.parse_args()
    print(json.dumps(real_size_flops() if args.flops_only else run(quick=args.quick), indent=2))
