"""The compatibility matrix: saved folders in Hub users' environments, from the supported floor to the newest release.

    python -m tests.compat.matrix            # what `make test-compat` (and CI) runs
    python -m tests.compat.matrix --only newest

Builds one venv per environment under `~/.cache/sigphi-compat` (cached; this project is never installed in them),
then in each, in a clean `python -I` process: the checks of `hub_checks.py` on folders built now by this code
*and* on every golden set committed under `tests/fixtures/golden/` (the time capsule), and `trl sft` with LoRA for
2 steps. Prints a check x environment table and exits non-zero on any failure.

Environments: the floor and 5.17 (transformers pinned, the other libraries as locked), the lock itself, and the
newest transformers/TRL/PEFT/timm/accelerate the registry serves right now, re-resolved on every run, so that
an upstream release that breaks us turns CI red. torch is shared from one venv (2.14.1, the locked build) through
a `.pth` file, which saves 5 GB and a minute per environment.
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.compat.folders import write_cases
from train.sigphi.qlora import LANGUAGE_MODEL_LORA_TARGETS

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SIGPHI_COMPAT_CACHE", Path.home() / ".cache" / "sigphi-compat"))
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
HUB_CHECKS = Path(__file__).with_name("hub_checks.py")
TORCH_PIN = ["torch==2.14.1", "torchvision==0.29.1"]
# What a Hub user of these folders installs: the libraries the folders' code imports, FAISS for the retriever's
# document index, and the training stack for `trl sft`.
HUB_USER_PACKAGES = ["transformers", "timm", "pillow", "numpy", "safetensors", "faiss-cpu", "trl", "peft",
                     "accelerate", "datasets", "bitsandbytes"]
FLOOR = "5.15.0"
MANAGED_GPU_IMAGES = "5.17.0"


def locked_versions() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        name, _, version = line.partition("==")
        if version:
            pins[name.strip().lower()] = version.strip()
    return pins


def environments() -> dict[str, list[str]]:
    """Environment name -> pip requirements (torch comes from the shared venv)."""
    pins = locked_versions()
    as_locked = [f"{package}=={pins[package]}" for package in HUB_USER_PACKAGES if package in pins]
    with_transformers = lambda version: [f"transformers=={version}"] + [
        pin for pin in as_locked if not pin.startswith("transformers==")]
    return {f"floor {FLOOR}": with_transformers(FLOOR),
            f"gpu-image {MANAGED_GPU_IMAGES}": with_transformers(MANAGED_GPU_IMAGES),
            f"locked {pins['transformers']}": as_locked,
            "newest": ["--upgrade", "--upgrade-strategy", "eager", *HUB_USER_PACKAGES]}


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, **kwargs)


def shared_torch() -> Path:
    """A venv holding only torch; every environment sees its site-packages after its own."""
    venv = CACHE / "torch-2.14.1"
    if not (venv / ".installed").exists():
        run([sys.executable, "-m", "venv", "--clear", venv], check=True)
        run([venv / "bin" / "pip", "install", "-q", *TORCH_PIN], check=True)
        (venv / ".installed").touch()
    return Path(run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    check=True).stdout.strip())


def ensure_venv(name: str, requirements: list[str], torch_site: Path) -> Path:
    """The environment's venv, created or refreshed; pinned ones are reused while their requirements are the same."""
    key = hashlib.sha256(json.dumps(requirements).encode()).hexdigest()[:12]
    venv = CACHE / f"{re.sub(r'[^A-Za-z0-9.]+', '-', name)}-{key}"
    python = venv / "bin" / "python"
    refresh = "--upgrade" in requirements
    if (venv / ".installed").exists() and not refresh:
        return python
    if not python.exists():
        run([sys.executable, "-m", "venv", venv], check=True)
        site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True).stdout
        Path(site.strip(), "_shared_torch.pth").write_text(f"{torch_site}\n")
    result = run([python, "-m", "pip", "install", "-q", *requirements, *TORCH_PIN], timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"{name}: pip install failed: {result.stderr.strip().splitlines()[-1:]}")
    (venv / ".installed").touch()
    return python


def versions(python: Path) -> str:
    script = ("import importlib.metadata as m; print(' '.join(f'{p} {m.version(p)}' for p in "
              "('transformers', 'trl', 'peft', 'timm')))")
    return run([python, "-I", "-c", script]).stdout.strip()


def hub_user_env(home: Path) -> dict:
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "HF_MODULES_CACHE": str(home / "modules")}


def hub_checks(python: Path, sigphi_case: Path, rg_case: Path, label: str, workdir: Path) -> dict[str, str]:
    result = run([python, "-I", HUB_CHECKS, sigphi_case, rg_case, "--label", label], cwd=workdir,
                 env=hub_user_env(workdir), timeout=900)
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {f"{label} checks": f"FAIL the check process died: {result.stderr.strip().splitlines()[-1:]}"}


def first_error(stderr: str) -> str:
    """The first `SomeError: message` line of a child's stderr (the launcher's own traceback follows it)."""
    lines = [line for line in stderr.splitlines() if re.match(r"^\w*(Error|Exception)\b.*:", line)]
    return (lines or stderr.strip().splitlines() or [""])[0][:300]


def trl_sft(python: Path, model_dir: Path, data_dir: Path, workdir: Path) -> str:
    """`trl sft` with LoRA on the language model and assistant-only loss, 2 steps, as README shows it.

    TRL refuses assistant-only loss on vision data before transformers 5.18; there the same run goes without it
    and the cell says so ("ok*")."""
    output = workdir / "trl-lora"
    command = [python.parent / "trl", "sft", "--model_name_or_path", model_dir, "--trust_remote_code",
               "--dataset_name", data_dir, "--max_steps", "2", "--per_device_train_batch_size", "4",
               "--report_to", "none", "--save_strategy", "no", "--use_cpu", "--use_peft", "--lora_r", "4",
               "--lora_target_modules", LANGUAGE_MODEL_LORA_TARGETS, "--output_dir", output]
    result = run([*command, "--assistant_only_loss"], cwd=workdir, env=hub_user_env(workdir), timeout=900)
    note = ""
    if result.returncode != 0 and "Assistant-only loss for vision datasets requires" in result.stderr:
        note = f"* without --assistant_only_loss ({first_error(result.stderr)})"
        result = run(command, cwd=workdir, env=hub_user_env(workdir), timeout=900)
    if result.returncode != 0:
        return f"FAIL exit {result.returncode}: {first_error(result.stderr)}"
    if not (output / "adapter_model.safetensors").exists():
        return "FAIL no adapter_model.safetensors written"
    return "ok" + note


def passed(outcome: str) -> bool:
    return outcome.startswith("ok")


def cell(outcome: str | None) -> str:
    """A table cell: ok, ok* (passed with a stated restriction), FAIL, or - (not run)."""
    if outcome is None:
        return "-"
    return ("ok*" if outcome != "ok" else "ok") if passed(outcome) else "FAIL"


def print_table(results: dict[str, dict[str, str]], header: dict[str, str]) -> None:
    checks = list(dict.fromkeys(check for column in results.values() for check in column))
    width = max(len(check) for check in checks)
    names = list(results)
    print()
    for name in names:
        print(f"{name}: {header[name]}")
    print("\n" + " " * width + " | " + " | ".join(names))
    for check in checks:
        cells = [cell(results[name].get(check)).ljust(len(name)) for name in names]
        print(check.ljust(width) + " | " + " | ".join(cells))
    for name in names:
        for check, outcome in results[name].items():
            if outcome != "ok":
                print(f"[{name}] {check}: {outcome}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only the environments whose name contains this")
    args = parser.parse_args()
    started = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sigphi-compat-") as tmp:
        workdir = Path(tmp)
        fresh = write_cases(workdir / "fresh")
        cases = {"fresh": fresh} | {f"golden {path.name}": [path / "sigphi", path / "retriever_generator"]
                                    for path in sorted(GOLDEN.iterdir()) if path.is_dir()}
        data_dir = workdir / "digits"
        run([sys.executable, "-m", "train.make_dataset", "digits", "--output_dir", data_dir], check=True, cwd=ROOT)
        torch_site = shared_torch()
        results, header = {}, {}
        for name, requirements in environments().items():
            if args.only and args.only not in name:
                continue
            print(f"[{name}] preparing the venv ...", flush=True)
            try:
                python = ensure_venv(name, requirements, torch_site)
            except (RuntimeError, subprocess.SubprocessError) as error:
                results[name], header[name] = {"venv": f"FAIL {error}"}, "?"
                continue
            header[name] = versions(python)
            print(f"[{name}] {header[name]}: checks ...", flush=True)
            results[name] = {}
            for label, (sigphi_case, rg_case) in cases.items():
                results[name].update(hub_checks(python, sigphi_case, rg_case, label, workdir))
            results[name]["fresh trl sft (LoRA, 2 steps)"] = trl_sft(python, fresh[0] / "model", data_dir, workdir)
    print_table(results, header)
    failures = sum(not passed(outcome) for column in results.values() for outcome in column.values())
    print(f"\ncompatibility matrix: {len(results)} environments, {failures} failures, "
          f"{time.monotonic() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
