"""What a Hub user does with saved folders, run in a venv where this project is not installed (`python -I`).

    python -I hub_checks.py SIGPHI_CASE RETRIEVER_GENERATOR_CASE [--label NAME]

Each case is a folder written by `tests/compat/folders.py` (`model/`, `probe.png`, `probe.json`,
`expected.safetensors`). Prints one JSON object: check name -> "ok" or the failure's last line. Only the standard
library, torch, transformers, PIL, numpy and safetensors are used: what a Hub user has.

Warnings: a `FutureWarning` or `DeprecationWarning` raised from the folders' own code (the modules transformers
copied from the folders, `transformers_modules.*`) is an error, and so is a transformers log line announcing a
deprecation during these checks: the next scheduled removal must not take us by surprise.
"""

import json
import logging
import sys
import traceback
import warnings
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor,
                          pipeline)

ATOL = 1e-4
REMOTE_MODULES = r"transformers_modules(\..*)?"


class DeprecationLog(logging.Handler):
    """Collects transformers log records that announce a deprecation while the folders' own code is on the stack
    (so a deprecation that transformers raises about its own internals, or about how this script calls a
    pipeline, is not counted against the folders)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecat" in message.lower() and any(
                "transformers_modules" in frame.filename for frame in traceback.extract_stack()):
            self.messages.append(message.splitlines()[0][:200])


def load_case(case: Path):
    probe = json.loads((case / "probe.json").read_text())
    expected = load_file(case / "expected.safetensors")
    return case / "model", Image.open(case / "probe.png").convert("RGB"), probe, expected


def chat_prompt(processor, question: str, answer: str | None = None) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return processor.apply_chat_template(messages, add_generation_prompt=answer is None)


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    difference = float((actual.float() - expected.float()).abs().max()) if actual.numel() else 0.0
    if difference > ATOL:
        raise AssertionError(f"{name}: max |difference| {difference:.2e} > {ATOL}")


def check_sigphi_loads(folder: Path, **_) -> None:
    """The five Auto classes load the folder, each as the class from the folder's own code."""
    loaded = {"AutoConfig": AutoConfig.from_pretrained(folder, trust_remote_code=True),
              "AutoModel": AutoModel.from_pretrained(folder, trust_remote_code=True),
              "AutoModelForCausalLM": AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True),
              "AutoModelForImageTextToText": AutoModelForImageTextToText.from_pretrained(folder,
                                                                                         trust_remote_code=True),
              "AutoProcessor": AutoProcessor.from_pretrained(folder, trust_remote_code=True)}
    expected = {"AutoConfig": "SigPhiConfig", "AutoModel": "SigPhiModel",
                "AutoModelForCausalLM": "SigPhiForConditionalGeneration",
                "AutoModelForImageTextToText": "SigPhiForConditionalGeneration", "AutoProcessor": "SigPhiProcessor"}
    for auto_class, instance in loaded.items():
        if type(instance).__name__ != expected[auto_class] or not type(instance).__module__.startswith(
                "transformers_modules"):
            raise AssertionError(f"{auto_class} gave {type(instance).__module__}.{type(instance).__name__}")


@torch.no_grad()
def check_sigphi_reproduces(folder: Path, image, probe: dict, expected: dict) -> None:
    """Same prompt tokens, logits (atol 1e-4) and greedy generation as the code that saved the folder."""
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor(text=[chat_prompt(processor, probe["question"])], images=[[image]], return_tensors="pt")
    if not torch.equal(inputs["input_ids"], expected["input_ids"]):
        raise AssertionError("the processor gives other input_ids than when the folder was saved")
    assert_close("logits", model(**inputs).logits, expected["logits"])
    generated = model.generate(**inputs, **probe["generate_kwargs"])
    if not torch.equal(generated, expected["generated"]):
        raise AssertionError(f"generate gave {generated.tolist()}, expected {expected['generated'].tolist()}")


@torch.no_grad()
def check_sigphi_batched_generate(folder: Path, image, probe: dict, **_) -> None:
    """Three left-padded prompts of different lengths generate what each generates alone."""
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    processor.tokenizer.padding_side = "left"
    prompts = [chat_prompt(processor, question) for question in
               ("Hi?", probe["question"], "Is this a very long question about the picture, or not?")]
    images = [[image], [image.rotate(90)], [image.transpose(Image.FLIP_LEFT_RIGHT)]]
    batch = processor(text=prompts, images=images, padding=True, return_tensors="pt")
    together = model.generate(**batch, **probe["generate_kwargs"])[:, batch["input_ids"].shape[1]:]
    for index, (prompt, sample_images) in enumerate(zip(prompts, images)):
        alone = processor(text=[prompt], images=[sample_images], return_tensors="pt")
        new_tokens = model.generate(**alone, **probe["generate_kwargs"])[:, alone["input_ids"].shape[1]:]
        if not torch.equal(new_tokens[0], together[index]):
            raise AssertionError(f"prompt {index}: batched {together[index].tolist()} "
                                 f"!= alone {new_tokens[0].tolist()}")


def check_sigphi_pipeline(folder: Path, image, probe: dict, **_) -> None:
    """`pipeline("image-text-to-text")` answers with what `generate` gives."""
    answerer = pipeline("image-text-to-text", model=str(folder), trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": probe["question"]}]}]
    result = answerer(text=messages, return_full_text=False, generate_kwargs=probe["generate_kwargs"])
    text = result[0]["generated_text"]
    processor, model = answerer.processor, answerer.model
    inputs = processor(text=[chat_prompt(processor, probe["question"])], images=[[image]], return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, **probe["generate_kwargs"])[0, inputs["input_ids"].shape[1]:]
    direct = processor.decode(ids, skip_special_tokens=True)
    if text != direct:
        raise AssertionError(f"pipeline answered {text!r}, generate {direct!r}")


def check_sigphi_trains(folder: Path, image, probe: dict, expected: dict) -> None:
    """Forward + backward with labels: the saved loss (atol 1e-4), and gradients reach tower, projector, decoder."""
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).train()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor(text=[chat_prompt(processor, probe["question"], probe["answer"])], images=[[image]],
                       return_tensors="pt")
    if not torch.equal(inputs["input_ids"], expected["train_input_ids"]):
        raise AssertionError("the processor gives other training input_ids than when the folder was saved")
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    assert_close("loss", loss.detach().reshape(1), expected["loss"])
    loss.backward()
    for part in ("vision_tower", "multi_modal_projector", "language_model"):
        gradients = [p.grad for p in getattr(model.model, part).parameters() if p.requires_grad]
        if not gradients or all(g is None or not g.abs().sum() for g in gradients):
            raise AssertionError(f"no gradient reached {part}")


@torch.no_grad()
def check_retriever_generator_predicts(folder: Path, image, probe: dict, expected: dict) -> None:
    """The composite loads with `AutoModel`/`AutoProcessor` and scores the choices as when it was saved."""
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    prediction = model.predict(processor, probe["question"], image, probe["answer_choices"])
    assert_close("choice_scores", prediction.choice_scores.float(), expected["choice_scores"])
    if prediction.label != int(expected["label"][0]):
        raise AssertionError(f"label {prediction.label} != {int(expected['label'][0])}")


SIGPHI_CHECKS = {"loads": check_sigphi_loads, "reproduces": check_sigphi_reproduces,
                 "batched_generate": check_sigphi_batched_generate, "pipeline": check_sigphi_pipeline,
                 "trains": check_sigphi_trains}
RETRIEVER_GENERATOR_CHECKS = {"predicts": check_retriever_generator_predicts}


def run_check(check, case: Path, deprecations: DeprecationLog) -> str:
    folder, image, probe, expected = load_case(case)
    deprecations.messages.clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            for category in (FutureWarning, DeprecationWarning):
                warnings.filterwarnings("error", category=category, module=REMOTE_MODULES)
            check(folder=folder, image=image, probe=probe, expected=expected)
    except Exception as error:  # reported, not raised: the table shows every check
        frame = traceback.extract_tb(error.__traceback__)[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        return f"FAIL {type(error).__name__}: {str(error).splitlines()[0][:300]} ({where})"
    if deprecations.messages:
        return f"FAIL deprecation logged: {deprecations.messages[0]}"
    return "ok"


def main() -> None:
    sigphi_case, retriever_generator_case = Path(sys.argv[1]), Path(sys.argv[2])
    prefix = sys.argv[sys.argv.index("--label") + 1] + " " if "--label" in sys.argv else ""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    deprecations = DeprecationLog()
    logging.getLogger("transformers").addHandler(deprecations)
    results = {f"{prefix}sigphi {name}": run_check(check, sigphi_case, deprecations)
               for name, check in SIGPHI_CHECKS.items()}
    results.update({f"{prefix}retriever-generator {name}": run_check(check, retriever_generator_case, deprecations)
                    for name, check in RETRIEVER_GENERATOR_CHECKS.items()})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
