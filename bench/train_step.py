"""Training step: SigPhi vs Llava of identical shapes, fp32 on CPU, same batch; and achieved FLOP/s."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.measure import median_seconds, run_isolated
from bench.models import BUILDERS, SHAPES, batch


def _step_fn(model, inputs, optimizer):
    def step():
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def measure_training_step(model_name: str, shape_name: str, repeats: int) -> dict:
    """Median seconds per optimizer step, tokens/s and FLOPs of one step (counted by torch's FlopCounterMode)."""
    shape = SHAPES[shape_name]
    model = BUILDERS[model_name](shape).train()
    inputs = batch(shape)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = _step_fn(model, inputs, optimizer)
    seconds = median_seconds(step, repeats, warmup=2)
    with FlopCounterMode(display=False) as counter:
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
    tokens = inputs["input_ids"].numel()
    return {"model": model_name, "seconds_per_step": seconds, "tokens_per_second": tokens / seconds,
            "flops_per_step": counter.get_total_flops(), "parameters": sum(p.numel() for p in model.parameters())}


def run(shape_name: str, repeats: int, rounds: int = 2) -> dict:
    """Alternate the two models `rounds` times (drift on a shared machine hits both) and keep each one's best."""
    results: dict[str, dict] = {}
    for _ in range(rounds):
        for name in ("sigphi", "llava"):
            result = run_isolated(measure_training_step, name, shape_name, repeats)
            if name not in results or result["seconds_per_step"] < results[name]["seconds_per_step"]:
                results[name] = result
    results["ratio_sigphi_over_llava"] = results["sigphi"]["seconds_per_step"] / results["llava"]["seconds_per_step"]
    return results
