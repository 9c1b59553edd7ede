"""README.md and the pages of docs/ as written: every fenced command and Python snippet runs, or is listed in
`NOT_RUN` with the reason.

The blocks of a page run in its order in one scratch folder of that page, so a later block finds what an earlier one
wrote, as a reader's would. Only the substitutions README itself announces are made ("Every other command and
snippet in this README and in `docs/` is run by tests/test_readme.py..."): Hub checkpoints become local stand-ins of
the same kind (a tiny Phi-3 folder, timm weights of the same timm model at a tiny shape, a tiny SmolVLM-architecture
teacher answering about bundled digits), training steps stop after 2 optimizer steps, the retriever-generator trains
for a fraction of an epoch, and absolute scratch paths (`/tmp/rg/...`) move into the scratch folder. Everything else
— flags, paths, the order of the steps — is the README's, so README cannot drift from the code."""

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import write_pretrained_parts
from tests.test_generate_dataset import build_teacher, write_digits

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = ("bash", "python")  # fenced `text` blocks are pictures (README's pipeline diagram), not commands
# Blocks run plus blocks listed in NOT_RUN across the pages: moving a block between pages keeps the count, losing one
# fails `test_no_block_is_lost`. Raise it when pages gain blocks.
MINIMUM_COMMAND_BLOCKS = 24
REAL_VISION_MODEL = "vit_so400m_patch14_siglip_384.webli"
VISION_SHAPE = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}
TRAINING_COMMAND = re.compile(r"^\s*(python -m train\.(align|sft)|trl sft)\b")
RETRIEVER_GENERATOR_SIZES = ("--retriever_epochs 0.05 --generator_epochs 0.05 --joint_epochs 0.02 "
                             "--image_warm_up_epochs 1 --reader_epochs 0.02 --reader_vision_epochs 1")

# A distinctive piece of each block that is not run -> why not (and what covers it instead).
NOT_RUN = {
    "make quickstart": "the README's two commands: CI runs `make test` itself, and tests/test_quickstart.py runs "
                       "the quickstart's recipe",
    "make lock": "re-resolves every dependency against the package registry and rewrites requirements.lock; "
                 "`make test-compat` and `make test-peer` are run by .ci/run",
    "accelerate launch --multi_gpu": "launch lines for several GPUs or nodes with `...` for the step's flags; "
                                     "tests/test_multiprocess.py runs two CPU processes of train.sft, "
                                     "tests/test_generate_dataset.py two of train.generate_dataset",
    "model.push_to_hub": "uploads to the Hub; tests/test_ecosystem.py pushes to a local stand-in of the Hub API",
    'pip install -e ".[demo]"': "starts a web server that runs until stopped; tests/test_demo.py drives it in a "
                                "browser",
    "python -m bench.retrieval_scoring": "a benchmark (minutes at its sizes), one section of `make bench`",
    "vllm serve": "needs vLLM, which pins its own torch and transformers: `make test-serve` (tests/serve/run.py) "
                  "starts the same server in vLLM's venv and sends it requests",
    "from vllm import LLM": "needs vLLM: `make test-serve` makes the same batched `LLM.chat` call in vLLM's venv",
    "--backend vllm": "needs vLLM: `make test-serve` runs `train.generate_dataset --backend vllm` in vLLM's venv",
}


@dataclass
class Block:
    language: str
    text: str
    line: int
    page: str

    @property
    def name(self) -> str:
        first = next(line for line in self.text.splitlines() if line.strip() and not line.startswith("#"))
        return f"{self.page}:{self.line} {first.strip()[:60]}"


def readme_blocks() -> list[Block]:
    """The fenced blocks of README.md and of every page of docs/, in reading order."""
    blocks = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        blocks += [Block(match.group(1), match.group(2), text[:match.start()].count("\n") + 1,
                         str(page.relative_to(ROOT)))
                   for match in re.finditer(r"^```(\w+)\n(.*?)^```", text, flags=re.S | re.M)]
    return blocks


def reason_not_run(block: Block) -> str | None:
    return next((reason for key, reason in NOT_RUN.items() if key in block.text), None)


BLOCKS_TO_RUN = [block for block in readme_blocks() if block.language in RUNNABLE and reason_not_run(block) is None]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """The scratch folder the blocks run in, and the local stand-ins for what they would download."""
    root = tmp_path_factory.mktemp("readme")
    parts = write_pretrained_parts(tmp_path_factory.mktemp("parts"), REAL_VISION_MODEL, VISION_SHAPE)
    teacher = build_teacher(tmp_path_factory.mktemp("teacher"))
    photos = tmp_path_factory.mktemp("photos")
    write_digits(photos, 5)
    return {"root": root, "phi3": parts / "phi3", "vision_weights": parts / "siglip.safetensors",
            "teacher": teacher, "photos": photos}


def scratch_folder(block: Block, workspace: dict[str, Path]) -> Path:
    """Where a page's blocks run: one folder per page."""
    folder = workspace["root"] / block.page.replace("/", "_").removesuffix(".md")
    folder.mkdir(exist_ok=True)
    return folder


def with_stand_ins(block: Block, workspace: dict[str, Path]) -> str:
    """The block with the substitutions the README announces, and nothing else."""
    text = block.text.replace("microsoft/Phi-3-mini-4k-instruct", str(workspace["phi3"]))
    text = text.replace("/tmp/rg/", f"{scratch_folder(block, workspace)}/rg/")
    vision_kwargs = {**VISION_SHAPE, "pretrained_cfg_overlay": {"file": str(workspace["vision_weights"])}}
    if block.language == "python":
        return text.replace(f'vision_model="{REAL_VISION_MODEL}"',
                            f'vision_model="{REAL_VISION_MODEL}", vision_kwargs={vision_kwargs!r}')
    text = text.replace(f"--vision_model {REAL_VISION_MODEL}",
                        f"--vision_model {REAL_VISION_MODEL} --vision_weights {workspace['vision_weights']} "
                        f"--vision_kwargs '{json.dumps(VISION_SHAPE)}'")
    lines = []
    for line in text.replace("\\\n", " ").splitlines():
        command = re.sub(r"\s+#.*$", "", line)
        if TRAINING_COMMAND.match(command):
            command += " --max_steps 2"
        elif "python -m train.generate_dataset" in command:
            command += f" --teacher {workspace['teacher']} --image_dir {workspace['photos']}"
        elif "python -m train.train_retriever_generator" in command:
            command += " " + RETRIEVER_GENERATOR_SIZES
        lines.append(command)
    return "\n".join(lines)


def test_every_block_is_run_or_says_why_not():
    blocks = readme_blocks()
    assert len(blocks) > 10, "the pages' fenced blocks were not found"
    assert all(block.language in (*RUNNABLE, "text") for block in blocks), [b.name for b in blocks]
    unused = [key for key in NOT_RUN if not any(key in block.text for block in blocks)]
    assert not unused, f"NOT_RUN entries that match no README block any more: {unused}"


def test_no_block_is_lost():
    commands = [block for block in readme_blocks() if block.language in RUNNABLE]
    assert len(commands) >= MINIMUM_COMMAND_BLOCKS, [block.name for block in commands]


@pytest.mark.parametrize("block", BLOCKS_TO_RUN, ids=lambda block: block.name)
def test_readme_block_runs_as_written(block, workspace):
    script = with_stand_ins(block, workspace)
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": venv_bin + os.pathsep + os.environ["PATH"], "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1"}
    command = (["bash", "-euo", "pipefail", "-c", script] if block.language == "bash"
               else [sys.executable, "-c", script])
    result = subprocess.run(command, cwd=scratch_folder(block, workspace), env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"{block.name} failed:\n{script}\n--- stderr ---\n{result.stderr[-4000:]}"
