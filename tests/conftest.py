"""Shared fixtures: a tiny random-weight SigPhi built locally (no network), and a Hub user's process."""

import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from train.sigphi.tiny import build_tiny_sigphi

QUESTION = "What digit is shown in this image?"


@pytest.fixture(scope="session")
def tiny():
    """(model, processor) of the tiny preset, in eval mode. Tests that change weights must build their own."""
    model, processor = build_tiny_sigphi(seed=0)
    return model.eval(), processor


@pytest.fixture(scope="session")
def tiny_dir(tiny, tmp_path_factory):
    """The tiny model and processor saved with `save_pretrained`, as `train.build_model` writes them."""
    path = tmp_path_factory.mktemp("tiny-sigphi")
    model, processor = tiny
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def write_pretrained_parts(root, vision_model: str, vision_shape: dict):
    """'Pretrained' parts as downloads give them, made locally: `root/phi3` (a tiny Phi-3 folder whose tokenizer has
    no <image> yet) and `root/siglip.safetensors` (timm weights of `vision_model` at `vision_shape`)."""
    import timm
    from safetensors.torch import save_file
    from transformers import Phi3Config, Phi3ForCausalLM

    from train.common.tokenizer import build_byte_level_tokenizer
    from train.sigphi.tiny import TINY_TEXT_KWARGS

    tokenizer = build_byte_level_tokenizer(image_token=None)  # a vocabulary with no row for <image> yet
    torch.manual_seed(0)
    text_config = Phi3Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **TINY_TEXT_KWARGS)
    Phi3ForCausalLM(text_config).save_pretrained(root / "phi3")
    tokenizer.save_pretrained(root / "phi3")
    tower = timm.create_model(vision_model, pretrained=False, **vision_shape)  # with its pooling head
    save_file(tower.state_dict(), root / "siglip.safetensors")
    return root


def random_image(seed: int, size=(37, 53)) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (*size, 3), dtype=np.uint8))


def chat(processor, question: str = QUESTION, n_images: int = 1, answer: str | None = None,
         add_generation_prompt: bool = True) -> str:
    """A chat-formatted prompt with `n_images` image slots, rendered by the processor's chat template."""
    messages = [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": question}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)


def hub_user_python(script: str, *args: str, cwd) -> subprocess.CompletedProcess:
    """Run `script` the way a Hub user's Python would: isolated (`-I`), started in `cwd`, with this venv's
    libraries but without this project.

    `-S` skips `.pth` processing, which is how the editable install of this project makes it importable;
    the libraries' folders are then put back on `sys.path` by hand. The script first asserts that none of
    the project's packages can be found.
    """
    library_paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    preamble = textwrap.dedent(f"""
        import sys, importlib.util
        sys.path.extend({library_paths!r})
        for name in ("configuration", "modeling", "processing", "train"):
            assert importlib.util.find_spec(name) is None, f"project package {{name}} is importable"
    """)
    path = cwd / "hub_user_script.py"
    path.write_text(preamble + textwrap.dedent(script))
    return subprocess.run([sys.executable, "-I", "-S", str(path), *args], cwd=cwd, capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}, timeout=600)


@pytest.fixture
def generate_kwargs():
    """Greedy decoding of a fixed length, so outputs are comparable token for token."""
    return {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}


torch.set_num_threads(2)


def write_digits_dataset(path, n_train: int, n_test: int = 0):
    """The first `n_train` (and `n_test`) bundled digits as a Parquet dataset folder at `path`."""
    from train.bundled_data.digits import DIGIT_QUESTION, digits_splits
    from train.common.vqa_data import conversation_row, write_parquet_splits

    splits = digits_splits()
    sizes = {"train": n_train, "test": n_test}
    write_parquet_splits({split: [conversation_row(image, DIGIT_QUESTION, answer)
                                  for _, image, answer in splits[split][:size]]
                          for split, size in sizes.items() if size}, path)
    return path


def stop_after_checkpoint(command: list[str], output_dir, step: int, stop_signal: int) -> None:
    """Start a training command, send `stop_signal` once its `checkpoint-{step}` is complete, wait for the exit."""
    import time

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (output_dir / f"checkpoint-{step}" / "trainer_state.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.02)
    process.send_signal(stop_signal)
    process.wait(timeout=60)
