"""Turn a benchmark results dict into BENCHMARKS.md and PNG plots (the file is generated, never hand-edited)."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench import generation, retrieval_scoring, token_reduction  # noqa: E402


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def _verdict(ok: bool) -> str:
    return "meets target" if ok else "**misses target**"


def _train_section(results: dict) -> list[str]:
    train = results["train_step"]
    ratio = train["ratio_sigphi_over_llava"]
    return [
        "## 1. Training step (fp32, CPU, same batch and shapes)", "",
        "| model | s/step (median) | tokens/s | peak RSS (MB) | parameters | FLOPs/step |", "|---|---|---|---|---|---|",
        *[f"| {name} | {_fmt(r['seconds_per_step'], 3)} | {_fmt(r['tokens_per_second'], 0)} | "
          f"{_fmt(r['peak_rss_mb'], 0)} | {r['parameters']:,} | {r['flops_per_step']:.3g} |"
          for name, r in ((n, train[n]) for n in ("sigphi", "llava"))], "",
        f"SigPhi / Llava step time: **{_fmt(ratio, 3)}** (target ≤ 0.9: {_verdict(ratio <= 0.9)}).", "",
    ]


def _machine_section(results: dict) -> list[str]:
    train = results["train_step"]
    flops = train["sigphi"]["flops_per_step"] / train["sigphi"]["seconds_per_step"]
    peak = results["matmul_flops_per_second"]
    return [
        "## 4. Machine limit", "",
        f"SigPhi training achieves {flops / 1e9:.2f} GFLOP/s (FLOPs counted by `torch.utils.flop_counter`) against "
        f"a measured fp32 matmul peak of {peak / 1e9:.2f} GFLOP/s: **{100 * flops / peak:.1f} %** of the machine.", "",
    ]


def _processor_section(results: dict) -> list[str]:
    proc = results["processor"]
    lines = ["## 3. Processor (images/s, 320×256 RGB → 224×224, one torch thread as in a DataLoader worker)", "",
             "| image processor | processor | " + " | ".join(f"batch {n}" for n in proc["fast"]["sigphi"]) + " |",
             "|---|---|" + "---|" * len(proc["fast"]["sigphi"])]
    for backend in ("fast", "slow"):
        for name in ("sigphi", "llava"):
            lines.append(f"| {backend} | {name} | " + " | ".join(
                _fmt(v, 1) for v in proc[backend][name].values()) + " |")
    worst = min(proc["ratio_sigphi_over_llava"]["fast"].values())
    lines += ["", "SigPhi / Llava processor throughput (fast image processor): " + ", ".join(
        f"batch {n}: **{_fmt(r, 3)}**" for n, r in proc["ratio_sigphi_over_llava"]["fast"].items())
        + f" (target ≥ 0.95: {_verdict(worst >= 0.95)}).", ""]
    return lines


def _quantization_section(results: dict) -> list[str]:
    quant = results["quantization"]
    lines = ["## 5. Quantization (language model weights, benchmark shape)", "",
             "| precision | bytes | vs fp32 |", "|---|---|---|"]
    fp32 = quant["bytes"]["fp32"]
    lines += [f"| {name} | {size:,} | {size / fp32:.2f} |" for name, size in quant["bytes"].items()]
    for key, label in (("lora_bench_shape", "benchmark shape"), ("lora_phi3_mini", "Phi-3-mini shape")):
        lora = quant[key]
        lines.append(f"\nLoRA r={lora['rank']} on the decoder projections, {label}: {lora['trainable']:,} trainable "
                     f"of {lora['total']:,} ({100 * lora['fraction']:.2f} %).")
    return lines + [""]


def _retrieval_section(results: dict, plot_dir: str) -> list[str]:
    lines = ["## 6. Retrieval index scaling (d = 256, top-10, single queries)", "",
             "| data | documents | index | build (s) | p50 (ms) | p99 (ms) | recall@10 |",
             "|---|---|---|---|---|---|---|"]
    for key, entry in results["retrieval"].items():
        kind, n = key.split()
        for row in entry["rows"]:
            lines.append(f"| {kind} | {int(n):,} | {row['index']} | {_fmt(row['build_s'], 1)} | "
                         f"{_fmt(row['p50_ms'], 3)} | {_fmt(row['p99_ms'], 3)} | {_fmt(row['recall_at_10'], 3)} |")
    lines += ["", "Cheapest setting at recall@10 ≥ 0.95:", ""]
    for key, entry in results["retrieval"].items():
        best = entry["best_at_target"]
        lines.append(f"- {key}: " + (f"{best['index']}, p50 {_fmt(best['p50_ms'], 3)} ms" if best else "none"))
    largest = max((k for k in results["retrieval"] if k.startswith("clustered")), key=lambda k: int(k.split()[1]))
    best = results["retrieval"][largest]["best_at_target"]
    ok = best is not None and best["p50_ms"] <= 5 and int(largest.split()[1]) >= 1_000_000
    lines += ["", f"Target at 1 M clustered documents (≤ 5 ms/query at recall@10 ≥ 0.95): {_verdict(ok)}"
              + ("" if int(largest.split()[1]) >= 1_000_000 else " (1 M not run in this mode)") + ".",
              "", f"![retrieval latency vs recall]({plot_dir}/retrieval.png)", ""]
    return lines


def _quickstart_section(results: dict) -> list[str]:
    quick = results.get("quickstart") or {"left_out": "not run"}
    if "left_out" in quick:
        return ["## 9. Quickstart", "", f"Left out: {quick['left_out']} (`make bench` re-runs an outdated "
                "quickstart unless given `--no_quickstart_rerun`).", ""]
    code = quick["code"]
    parts = {part: metrics for part, metrics in quick.items() if part != "code"}
    lines = ["## 9. Quickstart (`make quickstart`, read from its metrics.json)", "",
             f"Run on commit {code['commit'][:7]} at {code['date']}.", "",
             "| part | stage | seconds |", "|---|---|---|"]
    for part, metrics in parts.items():
        for stage, seconds in metrics.get("stage_seconds", {}).items():
            lines.append(f"| {part} | {stage} | {seconds} |")
    lines.append("")
    lines += [f"- {part}: " + ", ".join(f"{k} = {v:.3f}" if isinstance(v, float) else f"{k} = {v}"
                                        for k, v in metrics.items() if k not in ("stage_seconds", "model_dir"))
              for part, metrics in parts.items()]
    return lines + [""]


def _gpu_section(results: dict) -> list[str]:
    if "gpu" not in results:
        return ["## 10. Real size on a GPU", "", "Not yet measured: no GPU machine was available. "
                "`python -m bench.gpu` measures it (QLoRA and bf16 LoRA SFT steps of SigLIP-SO400M + Phi-3-mini, "
                "random weights of the real shapes) and `make bench` then includes it.", ""]
    gpu = results["gpu"]
    versions = ", ".join(f"{k} {v}" for k, v in gpu["versions"].items())
    model = gpu["model"]
    lines = ["## 10. Real size on a GPU", "",
             f"{gpu['device']}; {versions}. Command: `python -m bench.gpu` (bitsandbytes installed from a wheel; "
             "no TRL or datasets on that machine). SigLIP-SO400M/14@384 + Phi-3-mini-4k shapes, random weights, "
             f"{model['parameters']:,} parameters, {model['image_seq_length']} image tokens per row; the model is "
             "loaded and prepared as `train.sft` does (NF4 + double quantization, bf16 compute, gradient "
             "checkpointing, LoRA r=16 on the language model, projector trained), AdamW, bf16 autocast. Peak memory is "
             "PyTorch's peak over the training steps (allocated, and reserved by the caching allocator).", "",
             "| setting | batch × seq | s/step (median) | tokens/s | peak allocated (GB) | peak reserved (GB) |",
             "|---|---|---|---|---|---|"]
    for name in ("qlora", "lora_bf16"):
        r = gpu.get(name)
        if r is None:
            continue
        if "seconds_per_step" not in r:
            lines.append(f"| {name} | – | {r.get('failed') or r.get('skipped')} | – | – | – |")
            continue
        lines.append(f"| {name} | {r['batch']} × {r['seq_len']} | {_fmt(r['seconds_per_step'], 3)} | "
                     f"{_fmt(r['tokens_per_second'], 0)} | {_fmt(r['peak_allocated_gb'], 2)} | "
                     f"{_fmt(r['peak_reserved_gb'], 2)} |")
    qlora = gpu.get("qlora", {})
    if "peak_reserved_gb" in qlora:
        verdict = "meets" if qlora["peak_reserved_gb"] <= 10 else "misses"
        lines += ["", f"QLoRA at batch {qlora['batch']} × seq {qlora['seq_len']}: "
                      f"peak {qlora['peak_reserved_gb']:.2f} GB reserved (goal ≤ 10 GB: **{verdict}**)."]
    return lines + [""]


def _plots(results: dict, plot_dir: str) -> None:
    os.makedirs(plot_dir, exist_ok=True)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for key, entry in results["retrieval"].items():
        rows = [r for r in entry["rows"] if r["index"] != "flat"]
        axis.plot([r["recall_at_10"] for r in rows], [r["p50_ms"] for r in rows], "o", label=key, alpha=0.7)
    axis.set_xlabel("recall@10")
    axis.set_ylabel("p50 latency (ms)")
    axis.set_yscale("log")
    axis.axvline(0.95, color="grey", linestyle="--")
    axis.legend(fontsize=7)
    axis.set_title("FAISS indexes: latency vs recall")
    figure.tight_layout()
    figure.savefig(os.path.join(plot_dir, "retrieval.png"), dpi=110)
    plt.close(figure)

    settings = results["generation"]["settings"]
    figure, axis = plt.subplots(figsize=(6, 4))
    for setting, by_model in settings.items():
        for name, row in by_model.items():
            speeds = row["tokens_per_second"]
            axis.plot([int(n) for n in speeds], list(speeds.values()), "o-", label=f"{name}, {setting}")
    axis.set_xlabel("new tokens")
    axis.set_ylabel("tokens/s")
    axis.legend(fontsize=7)
    axis.set_title("Greedy generation, SigPhi vs Llava")
    figure.tight_layout()
    figure.savefig(os.path.join(plot_dir, "generation.png"), dpi=110)
    plt.close(figure)


def _real_size_section() -> list[str]:
    """The "Real size on a CPU" sections, re-rendered from the last `python -m bench.real_size` runs' results
    (`real_size.json`; `real_size_float32.json` from a run with `--compute_dtype float32`)."""
    import json

    from bench.real_size import render_section

    sections = []
    for name in ("real_size.json", "real_size_float32.json"):
        if os.path.exists(f"bench/results/{name}"):
            with open(f"bench/results/{name}") as handle:
                sections.append(render_section(json.load(handle)))
    return sections


def _stored_section(module: str) -> list[str]:
    """A section measured by its own command (`python -m bench.<module>`), re-rendered from the results it stored."""
    import importlib
    import json

    bench = importlib.import_module(f"bench.{module}")
    if not os.path.exists(bench.RESULTS):
        return []
    with open(bench.RESULTS) as handle:
        return bench.render_section(json.load(handle))


def write_report(results: dict, path: str, plot_dir: str = "docs") -> None:
    machine = results["machine"]
    header = [
        "# Benchmarks", "",
        "Generated by `bench/run.py` — do not edit by hand. SigPhi against transformers' own "
        "`LlavaForConditionalGeneration` built to identical shapes; ratios are measured in the same run "
        "(absolute times on shared machines are noisy, ratios are what count).", "",
        f"- command: `{results['command']}` ({results['mode']} sizes), {results['date']}",
        f"- machine: {machine['cores']} cores ({machine['cpu']}), torch {machine['torch']}, "
        f"{machine['threads']} threads, Python {machine['python']}",
        f"- section wall times (s): {results.get('section_seconds', {})}",
        f"- sections measured at: {results.get('section_dates', {})}", "",
    ]
    body = (_train_section(results) + generation.report_section(results) + ["![generation](docs/generation.png)", ""]
            + _processor_section(results) + _machine_section(results) + _quantization_section(results)
            + _retrieval_section(results, plot_dir)
            + (retrieval_scoring.report_section(results) if "retrieval_scoring" in results else [])
            + (token_reduction.report_section(results) if "token_reduction" in results else [])
            + _quickstart_section(results) + _gpu_section(results) + _real_size_section()
            + [line for module in ("serving", "large_index", "joint_scaling") for line in _stored_section(module)])
    _plots(results, plot_dir)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(header + body) + "\n")
