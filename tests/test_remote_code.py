"""A saved SigPhi folder works for a Hub user: a fresh `python -I` process where this project is not importable."""

import json

import torch

from tests.conftest import hub_user_python

LOAD_GENERATE_RESAVE = """
import sys, json, torch, numpy as np
from PIL import Image
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText,
                          AutoProcessor)

src, dst = sys.argv[1], sys.argv[2]
config = AutoConfig.from_pretrained(src, trust_remote_code=True)
base = AutoModel.from_pretrained(src, trust_remote_code=True)
causal = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(src, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(src, trust_remote_code=True)
image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (37, 53, 3), dtype=np.uint8))
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=[text], images=[[image]], return_tensors="pt")
with torch.no_grad():
    cached = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    uncached = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=False)
    logits = model(**inputs).logits
model.save_pretrained(dst)
processor.save_pretrained(dst)
torch.save({"input_ids": inputs["input_ids"], "pixel_values": inputs["pixel_values"], "logits": logits,
            "generated": cached}, dst + "/../first_load.pt")
print(json.dumps({"config": type(config).__name__, "base": type(base).__name__, "causal": type(causal).__name__,
                  "model": type(model).__name__, "processor": type(processor).__name__,
                  "model_module": type(model).__module__, "cache_equal": bool(torch.equal(cached, uncached))}))
"""

RELOAD = """
import sys, torch
from transformers import AutoModelForImageTextToText
folder = sys.argv[1]
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
first = torch.load(folder + "/../first_load.pt")
with torch.no_grad():
    logits = model(input_ids=first["input_ids"], pixel_values=first["pixel_values"]).logits
print(float((logits - first["logits"]).abs().max()))
"""


def test_hub_user_loads_generates_resaves_and_reloads(tiny, tiny_dir, tmp_path):
    resaved = tmp_path / "resaved"
    first = hub_user_python(LOAD_GENERATE_RESAVE, str(tiny_dir), str(resaved), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads(first.stdout.strip().splitlines()[-1])
    assert report == {"config": "SigPhiConfig", "base": "SigPhiModel", "causal": "SigPhiForConditionalGeneration",
                      "model": "SigPhiForConditionalGeneration", "processor": "SigPhiProcessor",
                      "model_module": report["model_module"], "cache_equal": True}
    assert report["model_module"].startswith("transformers_modules"), "the class must come from the saved code"

    # The copy loaded from remote code is itself self-contained when saved again.
    assert {"modeling_sigphi.py", "configuration_sigphi.py", "processing_sigphi.py"} <= {
        p.name for p in resaved.iterdir()}
    second = hub_user_python(RELOAD, str(resaved), cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert float(second.stdout.strip().splitlines()[-1]) == 0.0

    # And it is the same model as the one built in this process.
    model, _ = tiny
    first_load = torch.load(tmp_path / "first_load.pt")
    with torch.no_grad():
        local = model(input_ids=first_load["input_ids"], pixel_values=first_load["pixel_values"]).logits
    assert torch.equal(local, first_load["logits"])


def test_hub_user_process_cannot_see_the_project(tmp_path):
    result = hub_user_python("import modeling", cwd=tmp_path)
    assert result.returncode != 0 and "No module named 'modeling'" in result.stderr
