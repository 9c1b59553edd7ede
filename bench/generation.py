"""Greedy generation and decode defaults: SigPhi vs Llava (the same Phi-3 decoder) under each cache setting.

Settings: transformers' default dynamic cache, a static cache, a static cache with the decode step compiled by
`torch.compile` (transformers' own auto-compile path, `CompileConfig`, which on CPU must be asked for), and no
cache. Each (model, setting) runs in a fresh process, because compiled graphs live as long as the process: its
first call (a whole `max(new_tokens)`-token answer) therefore includes compilation, and it is reported apart from
the steady-state tokens/s. That first call decides the default: a setting becomes the default only if it wins over
a whole answer including its compile time, since one-off CLI runs and notebooks pay it every time.
"""

import time

import torch
from transformers import CompileConfig

from bench.measure import median_seconds, run_isolated
from bench.models import BUILDERS, SHAPES, batch

SETTINGS = ("dynamic_cache", "static_cache", "static_cache_compiled", "no_cache")
DECODE_TARGET = 1.1  # SigPhi's default decode tokens/s over Llava's default
CLEAR_WIN = 0.05  # a setting replaces transformers' default only if its first whole answer is 5 % faster (noise)


def _generate_kwargs(setting: str) -> dict:
    if setting == "no_cache":
        return {"use_cache": False}
    if setting == "static_cache":
        return {"cache_implementation": "static"}
    if setting == "static_cache_compiled":
        compile_config = CompileConfig(mode="default")  # "reduce-overhead" means CUDA graphs
        compile_config._compile_all_devices = True  # transformers compiles on accelerators only unless told
        return {"cache_implementation": "static", "compile_config": compile_config}
    return {}


def measure(model_name: str, setting: str, shape_name: str, new_token_counts: tuple[int, ...],
            repeats: int) -> dict:
    """First-call seconds of the longest answer, then steady-state tokens/s per answer length (own process)."""
    shape = SHAPES[shape_name]
    model = BUILDERS[model_name](shape).eval()
    inputs = batch(shape, batch_size=1)
    kwargs = _generate_kwargs(setting)

    def generate(new_tokens: int):
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=0, **kwargs)

    counts = new_token_counts[:1] if setting == "no_cache" else new_token_counts
    start = time.perf_counter()
    generate(counts[-1])
    first_call = time.perf_counter() - start
    tokens_per_second = {n: n / median_seconds(lambda: generate(n), repeats, warmup=1) for n in counts}
    return {"first_call_seconds": first_call, "first_call_tokens": counts[-1], "tokens_per_second": tokens_per_second}


def run(shape_name: str, new_token_counts: tuple[int, ...], repeats: int, compile_check: bool) -> dict:
    """Every (model, setting) pair in its own process; ratios to Llava's default (dynamic cache) per length."""
    settings = [s for s in SETTINGS if compile_check or s != "static_cache_compiled"]
    results: dict = {"settings": {}}
    for setting in settings:
        for name in BUILDERS:
            results["settings"].setdefault(setting, {})[name] = run_isolated(
                measure, name, setting, shape_name, new_token_counts, repeats)
    llava_default = results["settings"]["dynamic_cache"]["llava"]["tokens_per_second"]
    results["ratio_to_llava_default"] = {
        setting: {n: speed / llava_default[n] for n, speed in by_model["sigphi"]["tokens_per_second"].items()}
        for setting, by_model in results["settings"].items()}
    longest = new_token_counts[-1]
    whole_answer = {setting: by_model["sigphi"]["first_call_seconds"]
                    for setting, by_model in results["settings"].items() if setting != "no_cache"}
    fastest = min(whole_answer, key=whole_answer.get)
    clear_win = whole_answer[fastest] < (1 - CLEAR_WIN) * whole_answer["dynamic_cache"]
    results["fastest_first_answer"] = {"new_tokens": longest, "seconds": whole_answer, "fastest": fastest,
                                       "default": fastest if clear_win else "dynamic_cache"}
    return results


def report_section(results: dict) -> list[str]:
    """The BENCHMARKS.md section of `run`'s results."""
    gen = results["generation"]
    settings = gen["settings"]
    counts = list(settings["dynamic_cache"]["sigphi"]["tokens_per_second"])
    lines = ["## 2. Greedy generation and decode defaults (batch 1, one image)", "",
             "Each (model, setting) in a fresh process. *First answer*: wall time of the process's first "
             f"{counts[-1]}-token answer, compilation included; then steady-state tokens/s (median, prefill "
             "included).", "",
             "| setting | model | first answer (s) | " + " | ".join(f"{n} new tokens (tok/s)" for n in counts)
             + " | vs Llava default, longest |", "|---|---|---|" + "---|" * len(counts) + "---|"]
    for setting, by_model in settings.items():
        for name, row in by_model.items():
            speeds = row["tokens_per_second"]
            cells = [f"{speeds[n]:,.1f}" if n in speeds else "–" for n in counts]
            ratio = (f"{gen['ratio_to_llava_default'][setting][max(speeds)]:.2f}" if name == "sigphi" else "")
            lines.append(f"| {setting.replace('_', ' ')} | {name} | {row['first_call_seconds']:.1f} | "
                         + " | ".join(cells) + f" | {ratio} |")
    default_ratios = gen["ratio_to_llava_default"]["dynamic_cache"]
    best_setting = max(gen["ratio_to_llava_default"], key=lambda s: max(gen["ratio_to_llava_default"][s].values()))
    best = max(gen["ratio_to_llava_default"][best_setting].values())
    first = gen["fastest_first_answer"]
    lines += ["", "SigPhi's default (dynamic cache) / Llava's default, tokens/s: " + ", ".join(
        f"{n}: **{r:.3f}**" for n, r in default_ratios.items())
        + f" (target ≥ {DECODE_TARGET}: {'met' if min(default_ratios.values()) >= DECODE_TARGET else '**missed**'}); "
        f"best steady state: {best_setting.replace('_', ' ')} at {best:.2f}×.",
        f"Whole first answer of {first['new_tokens']} tokens, the process's first call: "
        + ", ".join(f"{s.replace('_', ' ')} {sec:.1f} s" for s, sec in first["seconds"].items())
        + f". Fastest: {first['fastest'].replace('_', ' ')}; "
        + (f"more than {CLEAR_WIN:.0%} faster than the dynamic cache, so it should be the default."
           if first["default"] != "dynamic_cache" else
           f"the default stays transformers' dynamic cache (no setting is {CLEAR_WIN:.0%} faster over a whole "
           "answer including its compile time)."), ""]
    return lines
