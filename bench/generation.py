"""Greedy generation: SigPhi vs Llava (the same Phi-3 decoder), with and without KV cache, static cache, compile."""

import torch

from bench.measure import median_seconds
from bench.models import BUILDERS, SHAPES, batch


def _tokens_per_second(model, inputs: dict, new_tokens: int, repeats: int, **generate_kwargs) -> float:
    def generate():
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=0, **generate_kwargs)
    return new_tokens / median_seconds(generate, repeats, warmup=1)


def run(shape_name: str, new_token_counts: tuple[int, ...], repeats: int, compile_check: bool) -> dict:
    """tokens/s for every (model, new tokens) pair, prompt = one image + text, batch 1, models interleaved."""
    shape = SHAPES[shape_name]
    inputs = batch(shape, batch_size=1)
    models = {name: build(shape).eval() for name, build in BUILDERS.items()}
    results: dict = {"dynamic_cache": {}, "no_cache": {}, "static_cache": {}}
    for new_tokens in new_token_counts:
        for name, model in models.items():
            results["dynamic_cache"].setdefault(name, {})[new_tokens] = _tokens_per_second(
                model, inputs, new_tokens, repeats)
    shortest = new_token_counts[0]
    for name, model in models.items():
        results["no_cache"][name] = {shortest: _tokens_per_second(model, inputs, shortest, repeats, use_cache=False)}
        results["static_cache"][name] = {shortest: _tokens_per_second(
            model, inputs, shortest, repeats, cache_implementation="static")}
    if compile_check:
        sigphi = models["sigphi"]
        sigphi.forward = torch.compile(sigphi.forward, dynamic=True)
        results["compiled_dynamic_cache"] = {"sigphi": {shortest: _tokens_per_second(sigphi, inputs, shortest,
                                                                                     repeats)}}
    results["ratio_sigphi_over_llava"] = {
        n: results["dynamic_cache"]["sigphi"][n] / results["dynamic_cache"]["llava"][n] for n in new_token_counts}
    return results
