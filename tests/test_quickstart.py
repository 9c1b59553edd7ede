"""`make quickstart`'s job, end to end: real training on the bundled digits reaches the promised accuracy."""

import json
import subprocess
import sys

import pytest

from tests.conftest import hub_user_python

ASK_DIGITS = """
import sys, torch, numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from transformers import AutoModelForImageTextToText, AutoProcessor
model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
processor.tokenizer.padding_side = "left"
digits = load_digits()
indices = [i for i in range(len(digits.images)) if i % 5 == 0][:40]
images = [[Image.fromarray(np.round(digits.images[i] * 255 / 16).astype(np.uint8))] for i in indices]
messages = [{"role": "user",
             "content": [{"type": "image"}, {"type": "text", "text": "What digit is shown in this image?"}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=[prompt] * len(indices), images=images, return_tensors="pt", padding=True)
with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
answers = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
print(sum(a.strip() == str(digits.target[i]) for a, i in zip(answers, indices)) / len(indices))
"""


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    output = tmp_path_factory.mktemp("quickstart")
    result = subprocess.run([sys.executable, "-m", "train.quickstart", "--output_dir", str(output)],
                            # the first run also builds the stand-in generator
                            capture_output=True, text=True, timeout=2700)
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def test_quickstart_reaches_95_percent_on_held_out_digits(quickstart):
    metrics = json.loads((quickstart / "metrics.json").read_text())
    sigphi = metrics["sigphi"]
    assert sigphi["n_test"] == 360
    assert sigphi["test_accuracy"] >= 0.95
    assert set(sigphi["stage_seconds"]) >= {"stage 1: align projector", "stage 2: 4bit LoRA fine-tuning"}


def test_quickstart_says_what_the_recipe_adds_to_the_stand_in_pretraining(quickstart):
    """Beside SigPhi's accuracy: the stand-in tower's own linear probe on the same test split, and SigPhi before
    stage 1 (untrained projector): the recipe, not the stand-in, must be what answers."""
    metrics = json.loads((quickstart / "metrics.json").read_text())
    sigphi = metrics["sigphi"]
    assert sigphi["standin_tower_linear_probe_accuracy"] >= 0.8  # the stand-in taught the tower the digits (0.981)
    assert sigphi["accuracy_before_stage_1"] <= sigphi["test_accuracy"] - 0.5
    assert metrics["code"]["commit"] and "uncommitted_code_changes" in metrics["code"]


def test_quickstart_retriever_generator_answers_from_retrieved_documents(quickstart):
    """The bundled task's answers are only in the documents (facts unseen in training): retrieval must carry it."""
    rag = json.loads((quickstart / "metrics.json").read_text())["retriever_generator"]
    assert {"accuracy_top1_retrieved", "accuracy_top5_retrieved", "accuracy_without_retrieval",
            "accuracy_with_oracle_documents", "retriever_recall_at_1", "retriever_recall_at_5"} <= set(rag)
    # The seeded run gave recall@1 0.955, top 1 0.965, top 5 (marginalised) 0.98, none 0.36 (docs/measurements.md);
    # thread count changes the rounding, and so the training run; the bars leave room for that.
    assert rag["retriever_recall_at_1"] >= 0.9
    assert rag["accuracy_top5_retrieved"] >= 0.93
    assert rag["accuracy_top5_retrieved"] >= rag["accuracy_top1_retrieved"]  # reading more documents never costs
    assert rag["accuracy_with_oracle_documents"] >= 0.95
    assert abs(rag["accuracy_without_retrieval"] - rag["chance_accuracy"]) <= 0.15
    assert (quickstart / "retriever_generator" / "retriever").is_dir()
    assert (quickstart / "retriever_generator" / "generator").is_dir()


def test_quickstart_model_answers_for_a_hub_user(quickstart, tmp_path):
    result = hub_user_python(ASK_DIGITS, str(quickstart / "sigphi"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split()[-1]) >= 0.9
