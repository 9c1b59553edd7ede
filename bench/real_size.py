"""Real size, proven: docs/training.md's SigLIP-SO400M/14 + Phi-3-mini recipe run end to end with random-weight
stand-ins.

    nice -n 10 python -m bench.real_size            # ≤ 60 min on 2 CPU cores; writes BENCHMARKS.md "Real size"

Nothing is downloaded. The stand-ins have the real shapes: timm `vit_so400m_patch14_siglip_384` with
`pretrained=False` saved to a file (fp32, like the `.webli` weights) for `--vision_weights`, a `Phi3ForCausalLM`
with Phi-3-mini-4k-instruct's config in bfloat16 saved as a folder (two shards, like the Hub checkpoint), and a
locally built tokenizer with Phi-3's vocabulary size and its chat special tokens at Phi-3's ids. Then every step
of the "Real size on one GPU" recipe of docs/training.md runs as the user would run it, each in a child process:

    build_model → (4-bit load of the built folder) → align → sft --quantization 4bit → merge_lora
    → a clean `python -I` process: AutoModelForImageTextToText + AutoProcessor (trust_remote_code=True),
      generate, save, reload, generate again

On a CPU it shrinks only what docs/training.md says a user may shrink there: `--vision_kwargs '{"img_size": 224}'` (256
image tokens instead of 729), batch 1 without gradient accumulation, a few steps, the bundled digits data (one-word
answers) instead of the teacher data (which needs a Hub teacher model). Each step's wall time, peak RSS
(`resource` usage of the child, `ru_maxrss`), peak anonymous memory (sampled from /proc: RSS minus mapped file
pages) and compute dtype go to the "Real size" section of BENCHMARKS.md; the other sections are left as they are.
A watchdog kills a step whose RSS passes `--max_rss_gb` (default 16).

`--shapes tiny` runs the same pipeline on tiny shapes in about two minutes (a check of this script, not a result).
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTION_TITLE = "## 11. Real size on a CPU (SigLIP-SO400M/14 + Phi-3-mini shapes, random weights)"
FORCED_DTYPE_TITLE = "## 12. Real size on a CPU, computing in {dtype} (`--compute_dtype {dtype}`)"

VISION_MODEL = "vit_so400m_patch14_siglip_384"
# microsoft/Phi-3-mini-4k-instruct's config.json (the fields that shape the model and its tokens)
PHI3_MINI_4K = {"vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu",
                "max_position_embeddings": 4096, "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0, "sliding_window": 2047, "bos_token_id": 1, "eos_token_id": 32000,
                "pad_token_id": 32000, "tie_word_embeddings": False, "attention_dropout": 0.0, "resid_pdrop": 0.0,
                "embd_pdrop": 0.0}
PHI3_GENERATION_EOS = [32000, 32001, 32007]
# Phi-3's added tokens, ids 32000-32010 (the sentencepiece vocabulary fills 0-31999)
PHI3_SPECIAL_TOKENS = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
                       "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>",
                       "<|user|>"]
PHI3_BASE_VOCAB = 32000

TINY_VISION_MODEL = "vit_base_patch16_siglip_224"
TINY_VISION_KWARGS = {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}
TINY_TEXT = {**PHI3_MINI_4K, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 4}


# ---------------------------------------------------------------------------------------------- stand-ins


def phi3_shaped_tokenizer():
    """A byte-level tokenizer laid out like Phi-3's: 32,000 base ids (the 256 byte symbols, then unused fillers),
    Phi-3's special tokens at ids 32000-32010, `<|endoftext|>` as pad and eos; SigPhi's `<image>` then gets 32011,
    as with the real tokenizer, and the decoder's 32,064 embedding rows leave spare ids as on the Hub."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from processing import CHAT_TEMPLATE

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    vocab.update({f"<|filler{i}|>": i for i in range(len(vocab), PHI3_BASE_VOCAB)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=4096, chat_template=CHAT_TEMPLATE)
    tokenizer.add_special_tokens({"additional_special_tokens": PHI3_SPECIAL_TOKENS})
    tokenizer.eos_token = tokenizer.pad_token = "<|endoftext|>"
    assert tokenizer.convert_tokens_to_ids("<|user|>") == 32010, tokenizer.convert_tokens_to_ids("<|user|>")
    return tokenizer


def make_standins(folder: Path, shapes: str) -> None:
    """Write `folder/siglip.safetensors` (timm weights) and `folder/phi3/` (bf16 Phi-3 + tokenizer)."""
    import timm
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if shapes == "real":
        tower = timm.create_model(VISION_MODEL, pretrained=False)
    else:
        tower = timm.create_model(TINY_VISION_MODEL, pretrained=False, **TINY_VISION_KWARGS)
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(folder / "siglip.safetensors"))
    n_vision = sum(p.numel() for p in tower.parameters())
    del tower

    config = Phi3Config(**(PHI3_MINI_4K if shapes == "real" else TINY_TEXT))
    torch.set_default_dtype(torch.bfloat16)  # initialised in bf16 directly: no fp32 copy of 3.8 B parameters
    model = Phi3ForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=PHI3_GENERATION_EOS, pad_token_id=32000)
    model.save_pretrained(folder / "phi3", max_shard_size="5GB")
    phi3_shaped_tokenizer().save_pretrained(folder / "phi3")
    n_text = sum(p.numel() for p in model.parameters())
    print("result:", json.dumps({"vision_parameters": n_vision, "text_parameters": n_text,
                                 "text_dtype": str(model.dtype)}))


def load_4bit(folder: str, compute_dtype: str = "auto") -> None:
    """What `train.sft --quantization 4bit` does first: the built folder loaded with NF4 decoder weights."""
    from train.common.precision import resolve_compute_dtype
    from train.sigphi.loading import checkpoint_dtype, load_sigphi
    from train.sigphi.qlora import quantization_config

    dtype = resolve_compute_dtype(compute_dtype, checkpoint_dtype(folder))
    model, _ = load_sigphi(folder, quantization_config=quantization_config("4bit", dtype))
    held = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        held[str(tensor.dtype)] = held.get(str(tensor.dtype), 0) + tensor.numel() * tensor.element_size()
    print(f"compute dtype: {str(dtype).removeprefix('torch.')}")
    print("result:", json.dumps({"bytes_by_dtype": held, "bytes": sum(held.values())}))


CLEAN_PROCESS = r'''
import json, sys, time
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

folder, resaved, dtype_name = sys.argv[1:4]
dtype = getattr(torch, dtype_name)
# bf16 where the device computes it natively (the folder's own dtype: no arguments); else, on a CPU without native
# bf16, the decoder in 4 bits computing in fp32 and everything else loaded as fp32 (a fp32 copy would need 2x memory)
kwargs = {} if dtype == torch.bfloat16 else {"dtype": dtype, "quantization_config": BitsAndBytesConfig(
    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)}

def answer(model, processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What digit is shown?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[Image.new("RGB", (8, 8), (40, 200, 90))], return_tensors="pt")
    start = time.perf_counter()
    tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    return tokens.tolist(), time.perf_counter() - start, inputs["input_ids"].shape[1]

model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, **kwargs)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
print("compute dtype:", dtype_name)
tokens, seconds, prompt_tokens = answer(model, processor)
model.save_pretrained(resaved)
processor.save_pretrained(resaved)
del model
again = AutoModelForImageTextToText.from_pretrained(resaved, trust_remote_code=True, **kwargs)
tokens_again, _, _ = answer(again, AutoProcessor.from_pretrained(resaved, trust_remote_code=True))
print("result:", json.dumps({"class": type(again).__name__, "module": type(again).__module__,
                             "prompt_tokens": prompt_tokens, "generated": tokens,
                             "generate_seconds": round(seconds, 1), "same_after_reload": tokens == tokens_again}))
assert tokens == tokens_again, (tokens, tokens_again)
'''


# ---------------------------------------------------------------------------------------------- measuring


def _proc_status(pid: int) -> dict:
    try:
        with open(f"/proc/{pid}/status") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
    except OSError:
        return {}
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "RssAnon", "RssFile") if key in fields}


def _shown(argv: list[str]) -> str:
    """The command as a user types it: `python`, paths relative to the repository, the clean script by name."""
    command = " ".join(argv).replace(sys.executable, "python").replace(str(REPO) + "/", "")
    if " -c " in command:
        command = command.split(" -c ")[0] + " -c CLEAN_PROCESS " + " ".join(command.split()[-3:])
    return command


def run_step(name: str, argv: list[str], max_rss: int, log, cwd: Path = REPO, deadline: float | None = None) -> dict:
    """Run one step as a child process; its wall time, peak RSS (`ru_maxrss` from `wait4`), sampled peak anonymous
    RSS, exit status and output. A watchdog kills it when its RSS passes `max_rss` or the run's deadline passes."""
    log.write(f"\n$ {' '.join(argv)}\n")
    log.flush()
    print(f"[real_size] {name}: {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output: list[str] = []
    peak = {"RssAnon": 0, "VmRSS": 0}
    killed: list[str] = []
    finished = threading.Event()

    def read() -> None:
        for line in process.stdout:
            output.append(line)
            log.write(line)
            log.flush()

    def watch() -> None:
        while not finished.wait(0.25):
            status = _proc_status(process.pid)
            for key in peak:
                peak[key] = max(peak[key], status.get(key, 0))
            if status.get("VmRSS", 0) > max_rss and not killed:
                killed.append(f"killed: RSS {status['VmRSS'] / 2**30:.1f} GiB over the {max_rss / 2**30:.0f} GiB limit")
                os.kill(process.pid, signal.SIGKILL)
            if deadline is not None and time.time() > deadline and not killed:
                killed.append("killed: the run's time budget was spent")
                os.kill(process.pid, signal.SIGKILL)

    threads = [threading.Thread(target=read, daemon=True), threading.Thread(target=watch, daemon=True)]
    for thread in threads:
        thread.start()
    _, status, usage = os.wait4(process.pid, 0)
    finished.set()
    threads[0].join(timeout=10)
    seconds = time.perf_counter() - start
    text = "".join(output)
    dtypes = re.findall(r"^compute dtype:\s*(\S+)", text, flags=re.M)
    jsons = [json.loads(line.removeprefix("result:")) for line in text.splitlines() if line.startswith("result:")]
    runtime = re.findall(r"'train_runtime': '?([\d.]+)", text)
    code = os.waitstatus_to_exitcode(status)
    error = killed[0] if killed else None
    if code != 0 and error is None:
        lines = [line for line in text.splitlines() if line.strip()]
        error = (lines[-1] if lines else f"exit status {code}")[:300]
    result = {"step": name, "command": _shown(argv), "seconds": round(seconds, 1),
              "peak_rss_bytes": usage.ru_maxrss * 1024, "peak_anon_bytes": peak["RssAnon"],
              "exit_status": code, "ok": code == 0, "error": error, "dtype": dtypes[-1] if dtypes else None,
              "info": jsons[-1] if jsons else None,
              "train_runtime_seconds": float(runtime[-1]) if runtime else None}
    print(f"[real_size] {name}: {'ok' if code == 0 else 'FAILED'} in {seconds:.0f} s, peak RSS "
          f"{usage.ru_maxrss / 2**20:.2f} GiB{'' if code == 0 else ' — ' + str(error)}", flush=True)
    return result


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def safetensors_dtypes(folder: Path) -> dict[str, int]:
    """{dtype: bytes} of a folder's safetensors files, read from their headers."""
    counts: dict[str, int] = {}
    for file in folder.glob("*.safetensors"):
        with open(file, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        for key, entry in header.items():
            if key != "__metadata__":
                start, end = entry["data_offsets"]
                counts[entry["dtype"]] = counts.get(entry["dtype"], 0) + end - start
    return counts


# ---------------------------------------------------------------------------------------------- the run


def recipe(work: Path, shapes: str, on_cpu: bool, align_steps: int, sft_steps: int,
           compute_dtype: str = "auto", img_size: int | None = None) -> list[tuple[str, list[str]]]:
    import torch

    from train.common.precision import resolve_compute_dtype

    python = sys.executable
    dtype_flag = [] if compute_dtype == "auto" else ["--compute_dtype", compute_dtype]
    compute_dtype = str(resolve_compute_dtype(compute_dtype, torch.bfloat16)).removeprefix("torch.")
    img_size = img_size or (224 if on_cpu else 384)
    vision_model, vision_kwargs = f"{VISION_MODEL}.webli", {"img_size": img_size} if img_size != 384 else {}
    if shapes == "tiny":
        vision_model, vision_kwargs = TINY_VISION_MODEL, {**TINY_VISION_KWARGS, "img_size": 32}
    batch = ["--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1"] if on_cpu else []
    short = ["--logging_steps", "1", "--save_strategy", "no", "--report_to", "none"]
    build = [python, "-m", "train.build_model", "--vision_model", vision_model,
             "--vision_weights", str(work / "standins" / "siglip.safetensors"),
             "--text_model", str(work / "standins" / "phi3"), "--dtype", "bfloat16", "--output_dir", str(work / "base")]
    if vision_kwargs:
        build[5:5] = ["--vision_kwargs", json.dumps(vision_kwargs)]
    return [
        ("stand-ins", [python, "-m", "bench.real_size", "--make_standins", str(work / "standins"), "--shapes", shapes]),
        ("make_dataset", [python, "-m", "train.make_dataset", "digits", "--output_dir", str(work / "data")]),
        ("build_model", build),
        ("load 4-bit", [python, "-m", "bench.real_size", "--load_4bit", str(work / "base"), *dtype_flag]),
        ("align", [python, "-m", "train.align", "--model_name_or_path", str(work / "base"), "--dataset",
                   str(work / "data"), "--output_dir", str(work / "aligned"),
                   *(batch or ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "4"]),
                   "--max_steps", str(align_steps), *short, *dtype_flag]),
        ("sft 4-bit", [python, "-m", "train.sft", "--model_name_or_path", str(work / "aligned"), "--dataset",
                       str(work / "data"), "--quantization", "4bit", "--output_dir", str(work / "sft"),
                       *(batch or ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "8"]),
                       "--gradient_checkpointing", "--max_steps", str(sft_steps), *short, *dtype_flag]),
        ("merge_lora", [python, "-m", "train.merge_lora", "--adapter", str(work / "sft"), "--output_dir",
                        str(work / "final"), "--dtype", "bfloat16"]),
        ("clean load + generate + save + reload",
         [python, "-I", "-c", CLEAN_PROCESS, str(work / "final"), str(work / "resaved"),
          compute_dtype]),
    ]


# Folders that no later step reads (the adapter's base is the aligned folder), deleted unless --keep_outputs.
NOT_NEEDED_AFTER = {"build_model": ("standins",), "align": ("base",), "merge_lora": ("aligned", "sft")}


def run(args) -> dict:
    import torch

    from train.common.precision import cpu_has_native_bf16

    work = Path(args.work_dir).resolve()
    if work.exists() and not args.keep_existing:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    on_cpu = not torch.cuda.is_available()
    max_rss = int(args.max_rss_gb * 2**30)
    deadline = time.time() + args.time_budget_min * 60
    results = []
    started = time.time()
    with open(work / "log.txt", "a") as log:
        for name, argv in recipe(work, args.shapes, on_cpu, args.align_steps, args.sft_steps, args.compute_dtype,
                                 args.img_size):
            if time.time() > deadline:
                results.append({"step": name, "command": _shown(argv), "ok": False, "skipped": True,
                                "error": "not started: the run's time budget was spent"})
                continue
            if name == "stand-ins" and args.standins:
                (work / "standins").symlink_to(Path(args.standins).resolve())
                results.append({"step": name, "command": f"reused {args.standins}", "ok": True, "skipped": True})
                continue
            if results and not results[-1]["ok"]:
                results.append({"step": name, "command": _shown(argv), "ok": False, "skipped": True,
                                "error": f"not started: {results[-1]['step']} failed"})
                continue
            results.append(run_step(name, argv, max_rss, log, deadline=deadline))
            if not args.keep_outputs:  # disk: at most two model folders at a time
                for sub in NOT_NEEDED_AFTER.get(name, ()):
                    if (work / sub).is_symlink():
                        (work / sub).unlink()
                    elif (work / sub).exists():
                        shutil.rmtree(work / sub)
            if name == "build_model" and results[-1]["ok"]:
                results[-1]["folder_bytes"] = folder_bytes(work / "base")
                results[-1]["folder_dtypes"] = safetensors_dtypes(work / "base")
            if name == "merge_lora" and results[-1]["ok"]:
                results[-1]["folder_dtypes"] = safetensors_dtypes(work / "final")
                results[-1]["dtype"] = "/".join(sorted(results[-1]["folder_dtypes"])).lower() + " (written)"
            if name == "build_model" and results[-1]["ok"]:
                results[-1]["dtype"] = "/".join(sorted(results[-1]["folder_dtypes"])).lower() + " (written)"
    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), native bf16: "
                   f"{cpu_has_native_bf16()}, torch {torch.__version__}, Python {platform.python_version()}",
        "shapes": args.shapes, "on_cpu": on_cpu, "img_size": args.img_size or (224 if on_cpu else 384),
        "total_seconds": round(time.time() - started, 1),
        "command": args.command_line, "steps": results,
    }
    with open(work / "results.json", "w") as handle:
        json.dump(summary, handle, indent=2)
    if not args.keep_outputs:
        for sub in ("standins", "base", "aligned", "sft", "final", "resaved"):
            if (work / sub).is_symlink():
                (work / sub).unlink()
            shutil.rmtree(work / sub, ignore_errors=True)
    return summary


# ---------------------------------------------------------------------------------------------- report


def _gb(value) -> str:
    return f"{value / 2**30:.2f}" if value else "–"  # GiB


def section_title(summary: dict) -> str:
    forced = re.search(r"--compute_dtype (\w+)", summary["command"])
    return FORCED_DTYPE_TITLE.format(dtype=forced.group(1)) if forced else SECTION_TITLE


def results_file(summary: dict) -> Path:
    forced = re.search(r"--compute_dtype (\w+)", summary["command"])
    return REPO / "bench" / "results" / (f"real_size_{forced.group(1)}.json" if forced else "real_size.json")


def render_section(summary: dict) -> str:
    steps = {s["step"]: s for s in summary["steps"]}
    lines = [section_title(summary), "",
             f"Written by `{summary['command']}` ({summary['date']}; whole run "
             f"{summary['total_seconds'] / 60:.1f} min) on {summary['machine']}. Every step is the command of "
             "docs/training.md, run in its own process; the stand-ins are random weights of the real shapes "
             "(timm `vit_so400m_patch14_siglip_384`, Phi-3-mini-4k's "
             "config in bf16, a tokenizer with Phi-3's 32,011 ids), built locally. Peak RSS is the child's "
             "`ru_maxrss`; it counts the pages of memory-mapped checkpoint files, so the anonymous part (memory the "
             "process itself holds, sampled from `/proc`) is given beside it.", ""]
    if summary.get("note"):
        lines += [summary["note"], ""]
    if summary["on_cpu"]:
        image = (f"`--vision_kwargs '{{\"img_size\": {summary['img_size']}}}'` ({(summary['img_size'] // 14) ** 2} "
                 "image tokens instead of 729), " if summary["img_size"] != 384 else "")
        lines += ["Shrunk on this CPU, as docs/training.md allows there: " + image +
                  "`--per_device_train_batch_size 1 --gradient_accumulation_steps 1`, "
                  "`--max_steps` of a few steps, and the bundled digits data (one-token answers; the recipe's teacher "
                  "data needs a Hub model). Nothing else: full depth and width, Phi-3's vocabulary, bf16 folders.", ""]
    lines += ["| step | status | wall time (s) | peak RSS (GiB) | peak anonymous (GiB) | dtype | command |",
              "|---|---|---|---|---|---|---|"]
    for s in summary["steps"]:
        status = "ok" if s["ok"] else ("not run" if s.get("skipped") else "**failed**")
        command = s["command"]
        lines.append(f"| {s['step']} | {status} | {s.get('seconds', '–')} | {_gb(s.get('peak_rss_bytes'))} | "
                     f"{_gb(s.get('peak_anon_bytes'))} | {s.get('dtype') or '–'} | `{command}` |")
    failures = [s for s in summary["steps"] if not s["ok"]]
    if failures:
        lines += ["", *[f"- {s['step']}: {s['error']}" for s in failures]]
    bf16 = steps.get("build_model", {}).get("folder_bytes")
    if bf16:
        lines += ["", f"bf16 model size (the built folder's safetensors): **{bf16 / 2**30:.2f} GiB** "
                      f"({bf16:,} bytes).", ""]
        for name, goal, what in [("build_model", 1.2, "building from parts"),
                                 ("load 4-bit", 0.6, "4-bit loading of the built folder"),
                                 ("merge_lora", None, "merging the adapter (bf16 written)")]:
            s = steps.get(name, {})
            if s.get("ok"):
                rss, anon = s["peak_rss_bytes"] / bf16, s["peak_anon_bytes"] / bf16
                target = f" (goal ≤ {goal}×: RSS {'meets' if rss <= goal else 'misses'}, anonymous " \
                         f"{'meets' if anon <= goal else 'misses'})" if goal else ""
                lines.append(f"- {what}: peak RSS **{rss:.2f}×**, anonymous **{anon:.2f}×** the bf16 size{target}")
        lines += ["", "Where peak RSS passes a goal that the anonymous memory meets, the difference is the "
                  "checkpoint's file pages: transformers (5.24, `modeling_utils.py` line 4579) opens every shard with "
                  "`safe_open(..., backend=\"mmap\")` and closes them only after the last weight is loaded (line "
                  "4600), so every page it read stays mapped, and counted in RSS, until then. They are clean page "
                  "cache the kernel can drop under memory pressure, not memory the process holds.", ""]
        for s in summary["steps"]:
            if s.get("train_runtime_seconds"):
                n_steps = re.search(r"--max_steps (\d+)", s["command"])
                lines.append(f"- {s['step']}: training loop (TRL's `train_runtime`) "
                             f"{s['train_runtime_seconds']:.0f} s for {n_steps.group(1) if n_steps else '?'} step(s); "
                             "the rest of its wall time is loading, quantizing and saving")
        final = steps.get("merge_lora", {}).get("folder_dtypes")
        if final:
            lines.append(f"- merged folder's tensors by dtype (bytes): {final}")
        clean = steps.get("clean load + generate + save + reload", {}).get("info")
        if clean:
            lines.append(f"- clean process: {clean}")
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Put `section` into BENCHMARKS.md in place of an earlier section of the same title, or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    title = section.splitlines()[0]
    start = text.find(title + "\n")
    if start >= 0:
        end = text.find("\n## ", start + len(title))
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default="outputs/real_size")
    parser.add_argument("--shapes", choices=["real", "tiny"], default="real")
    parser.add_argument("--align_steps", type=int, default=3)
    parser.add_argument("--sft_steps", type=int, default=2)
    parser.add_argument("--max_rss_gb", type=float, default=16.0)
    parser.add_argument("--img_size", type=int, default=None,
                        help="Image size of the tower (default: 224 on a CPU, as docs/training.md allows there; "
                             "384 on a GPU).")
    parser.add_argument("--compute_dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="Passed to align and sft (auto: bf16 where the device computes it natively, else fp32).")
    parser.add_argument("--time_budget_min", type=float, default=60.0)
    parser.add_argument("--benchmarks", default=str(REPO / "BENCHMARKS.md"),
                        help="Markdown file whose 'Real size' section is (re)written; '' for none.")
    parser.add_argument("--keep_outputs", action="store_true", help="Keep the model folders (tens of GB).")
    parser.add_argument("--standins", help="Reuse the stand-ins of an earlier run (its work_dir/standins folder).")
    parser.add_argument("--keep_existing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--make_standins", help=argparse.SUPPRESS)
    parser.add_argument("--load_4bit", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_standins:
        return make_standins(Path(args.make_standins), args.shapes)
    if args.load_4bit:
        return load_4bit(args.load_4bit, args.compute_dtype)
    args.command_line = shlex.join(["python", "-m", "bench.real_size", *sys.argv[1:]])
    summary = run(args)
    section = render_section(summary)
    print(section)
    if args.benchmarks and args.shapes == "real":
        write_section(Path(args.benchmarks), section)
        with open(results_file(summary), "w") as handle:  # `make bench` re-renders it
            json.dump(summary, handle, indent=2)
    if not all(s["ok"] for s in summary["steps"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
