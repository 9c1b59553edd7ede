"""The model card a pushed folder carries: a `huggingface_hub.ModelCard` built from the model's config.

The card states what the folder really supports (its `auto_map` decides the pipeline tag and the usage snippet),
the pretrained parts the config names as base models, and the datasets and metrics the caller knows about. Copied
into saved folders with the saving code, so huggingface_hub is imported only when a card is made.
"""

import os
import re
from pathlib import Path

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

IMAGE_TEXT_TO_TEXT_USAGE = """\
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

model = AutoModelForImageTextToText.from_pretrained("{repo_id}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
image = Image.open("photo.jpg")
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is in this image?"}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=[prompt], images=[[image]], return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=64)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))

# or as a pipeline
pipe = pipeline("image-text-to-text", model="{repo_id}", trust_remote_code=True)
messages[0]["content"][0]["image"] = image
print(pipe(text=messages, max_new_tokens=64)[0]["generated_text"])"""

AUTO_MODEL_USAGE = """\
from transformers import AutoModel

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)"""

CARD_TEMPLATE = """\
---
{{ card_data }}
---

# {{ title }}

A `{{ model_type }}` model ({{ architecture }}) saved with its own code: it loads with `trust_remote_code=True`,
without installing the project it was built with.
{% if base_models %}
Built from: {{ base_models }}.
{% endif %}{% if datasets %}
Trained on: {{ datasets }}.
{% endif %}
## Usage

```python
{{ usage }}
```
{% if metrics %}
## Results

| metric | value |
|---|---|
{% for name, value in metrics.items() %}| {{ name }} | {{ value }} |
{% endfor %}{% endif %}
## Files

`config.json` (with `auto_map` for the Auto classes), safetensors weights, the model's code files{{ processor_files }}.
"""



def base_models(config, exclude: str = "") -> list[str]:
    """Hub ids of the pretrained parts named in `config` and its sub-configs: each decoder's `_name_or_path` (kept
    in `text_config` when SigPhi is built from a checkpoint) and timm towers saved with a pretrained tag (`.webli`).
    Local paths and `exclude` (the repo being pushed) are left out."""
    found = []
    name = getattr(config, "_name_or_path", "") or ""
    if _HUB_ID.match(name) and not os.path.exists(name) and name != exclude:
        found.append(name)
    timm_name = getattr(config, "timm_model_name", "") or ""
    if "." in timm_name:
        found.append(f"timm/{timm_name}")
    for value in vars(config).values():
        if hasattr(value, "to_dict") and hasattr(value, "model_type"):  # a sub-config
            found += base_models(value, exclude)
    return list(dict.fromkeys(found))


def build_model_card(config, repo_id: str, folder: str | os.PathLike, base_model: list[str] | None = None,
                     datasets: list[str] | None = None, metrics: dict[str, float] | None = None,
                     tags: list[str] | None = None):
    """A `huggingface_hub.ModelCard` for the saved `folder` about to be pushed to `repo_id`.

    Base models default to the ones the config names (see `base_models`); datasets and metrics are what the caller
    knows about the training. The pipeline tag and usage snippet follow the folder's `auto_map`, so the card only
    promises what the folder supports.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    auto_map = getattr(config, "auto_map", None) or {}
    image_text_to_text = "AutoModelForImageTextToText" in auto_map
    pipeline_tag = "image-text-to-text" if image_text_to_text else None
    base_model = base_model if base_model is not None else base_models(config, exclude=repo_id)
    eval_results = None
    if datasets and metrics:  # on the Hub a result belongs to a dataset: the first one named
        eval_results = [EvalResult(task_type=pipeline_tag or "other", dataset_type=datasets[0],
                                   dataset_name=datasets[0], metric_type=name, metric_value=value)
                        for name, value in metrics.items()]
    card_data = ModelCardData(
        library_name="transformers", pipeline_tag=pipeline_tag, base_model=base_model or None,
        datasets=datasets or None, tags=list(dict.fromkeys([config.model_type, "custom_code", *(tags or [])])),
        model_name=repo_id.split("/")[-1], eval_results=eval_results)
    has_processor = (Path(folder) / "processor_config.json").exists()
    return ModelCard.from_template(
        card_data, template_str=CARD_TEMPLATE, title=repo_id.split("/")[-1], model_type=config.model_type,
        architecture=", ".join(getattr(config, "architectures", None) or [type(config).__name__]),
        base_models=", ".join(f"[{name}](https://huggingface.co/{name})" for name in base_model),
        datasets=", ".join(datasets or []), metrics=metrics or {},
        usage=(IMAGE_TEXT_TO_TEXT_USAGE if image_text_to_text else AUTO_MODEL_USAGE).format(repo_id=repo_id),
        processor_files=", the processor (`processor_config.json`, tokenizer files, `chat_template.jinja`)"
                        if has_processor else "")
