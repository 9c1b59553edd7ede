"""SigPhi in the Hugging Face ecosystem, as its users reach for it: `pipeline`, `push_to_hub` with a model card,
`report_to` logging; and what makes a saved folder safe to share: safetensors only, loading never unpickles,
remote code that imports only the allowed libraries and does nothing when imported.

Uploads are intercepted (`hub_uploads`): nothing leaves the machine, and the folder that would have been uploaded
is loaded back in a Hub user's process.
"""

import ast
import copy
import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, RepoUrl
from huggingface_hub.utils import filter_repo_objects

from modeling.model_card import base_models
from modeling.self_contained_saving import PROJECT_PACKAGES, with_relative_imports
from tests.conftest import QUESTION, chat, hub_user_python, random_image, write_digits_dataset
from train.common.vqa_data import conversation_row

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
REMOTE_CODE_LIBRARIES = {"torch", "transformers", "timm", "PIL", "numpy"}  # DESIGN.md §3, at module level
REMOTE_CODE_LAZY_LIBRARIES = {"huggingface_hub"}  # imported only inside the functions that upload

# The image every process here asks about: the same pixels in this process and in a Hub user's.
IMAGE_SNIPPET = "Image.fromarray(np.random.RandomState(0).randint(0, 255, (37, 53, 3), dtype=np.uint8))"


def local_answer_ids(model, processor, max_new_tokens: int = 4) -> list[int]:
    """Greedy answer tokens of the in-process model for `QUESTION` about `random_image(0)`."""
    inputs = processor(text=[chat(processor)], images=[[random_image(0)]], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                do_sample=False)
    return output[0, inputs["input_ids"].shape[1]:].tolist()


# --- pipeline ----------------------------------------------------------------------------------------------------

PIPELINE_SCRIPT = f"""
import sys, json, numpy as np
from PIL import Image
from transformers import pipeline
pipe = pipeline("image-text-to-text", model=sys.argv[1], trust_remote_code=True)
image = {IMAGE_SNIPPET}
content = [{{"type": "image", "image": image}}, {{"type": "text", "text": sys.argv[2]}}]
messages = [{{"role": "user", "content": content}}]
out = pipe(text=messages, max_new_tokens=4, min_new_tokens=4, do_sample=False)
answer = out[0]["generated_text"][-1]
print(json.dumps({{"model": type(pipe.model).__name__, "role": answer["role"], "answer": answer["content"],
                  "answer_ids": pipe.processor.tokenizer(answer["content"], add_special_tokens=False).input_ids}}))
"""


def test_image_text_to_text_pipeline_answers_a_chat_in_a_hub_users_process(tiny, tiny_dir, tmp_path):
    result = hub_user_python(PIPELINE_SCRIPT, str(tiny_dir), QUESTION, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model"] == "SigPhiForConditionalGeneration" and report["role"] == "assistant"
    model, processor = tiny
    expected = processor.tokenizer.decode(local_answer_ids(model, processor), skip_special_tokens=True)
    assert report["answer"] == expected


# --- push_to_hub and the model card -----------------------------------------------------------------------------

@pytest.fixture
def hub_uploads(monkeypatch, tmp_path) -> dict[str, Path]:
    """Intercept the Hub: `create_repo` answers without a network, `upload_folder` copies the files it would upload
    (its ignore patterns applied the way huggingface_hub applies them) to `tmp_path/hub/<owner>--<name>`."""
    uploads = {}

    def create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        folder, target = Path(folder_path), tmp_path / "hub" / repo_id.replace("/", "--")
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        for relative in filter_repo_objects(files, ignore_patterns=ignore_patterns):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / relative, target / relative)
        uploads[repo_id] = target
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return uploads


def push_with_push_to_hub(model, processor, repo_id, folder, **card):
    return model.push_to_hub(repo_id, processor=processor, **card)


def push_with_save_pretrained(model, processor, repo_id, folder, **card):
    """The training-output route: the folder already holds a processor and the trainer's pickled arguments."""
    processor.save_pretrained(folder)
    torch.save({"learning_rate": 1e-3}, folder / "training_args.bin")
    return model.save_pretrained(folder, push_to_hub=True, repo_id=repo_id, **card)


LOAD_PUSHED_COPY = """
import sys, json, torch, numpy as np
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sys.argv[2]}]}]
inputs = processor(text=[processor.apply_chat_template(messages, add_generation_prompt=True)],
                   images=[[IMAGE]], return_tensors="pt")
with torch.no_grad():
    output = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
print(json.dumps(output[0, inputs["input_ids"].shape[1]:].tolist()))
""".replace("IMAGE", IMAGE_SNIPPET)

SIGPHI_FILES = {"config.json", "generation_config.json", "model.safetensors", "configuration_sigphi.py",
                "modeling_sigphi.py", "processing_sigphi.py", "self_contained_saving.py", "model_card.py",
                "timm_vision.py", "transformers_compat.py", "processor_config.json", "chat_template.jinja",
                "tokenizer.json", "tokenizer_config.json", "README.md"}


@pytest.mark.parametrize("push", [push_with_push_to_hub, push_with_save_pretrained], ids=["push_to_hub",
                                                                                          "save_pretrained"])
def test_push_uploads_a_self_contained_folder_with_a_model_card_that_loads_for_a_hub_user(tiny, hub_uploads,
                                                                                        tmp_path, push):
    model, processor = tiny
    folder = tmp_path / "tiny-sigphi"
    commit_url = push(model, processor, "me/tiny-sigphi", folder, datasets=["me/digits-vqa"],
                      metrics={"test_accuracy": 0.5}, base_model=["microsoft/Phi-3-mini-4k-instruct"])
    assert commit_url == "https://huggingface.co/me/tiny-sigphi/commit/0"
    uploaded = hub_uploads["me/tiny-sigphi"]
    assert {p.name for p in uploaded.iterdir()} == SIGPHI_FILES  # no pickles, nothing missing

    card = ModelCard.load(uploaded / "README.md")
    assert (card.data.library_name, card.data.pipeline_tag) == ("transformers", "image-text-to-text")
    assert card.data.base_model == ["microsoft/Phi-3-mini-4k-instruct"]
    assert card.data.datasets == ["me/digits-vqa"]
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("test_accuracy", 0.5)]
    assert 'AutoModelForImageTextToText.from_pretrained("me/tiny-sigphi", trust_remote_code=True)' in card.text
    assert "| test_accuracy | 0.5 |" in card.text

    result = hub_user_python(LOAD_PUSHED_COPY, str(uploaded), QUESTION, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == local_answer_ids(model, processor)


def test_the_card_names_the_pretrained_parts_the_config_records_and_no_local_paths(tiny, tmp_path):
    config = copy.deepcopy(tiny[0].config)
    assert base_models(config) == []  # the tiny preset is built from scratch
    config.text_config._name_or_path = "microsoft/Phi-3-mini-4k-instruct"
    config.vision_config.timm_model_name = "vit_so400m_patch14_siglip_384.webli"
    assert set(base_models(config)) == {"microsoft/Phi-3-mini-4k-instruct", "timm/vit_so400m_patch14_siglip_384.webli"}
    (tmp_path / "local").mkdir()
    config.text_config._name_or_path = str(tmp_path / "local")
    assert base_models(config) == ["timm/vit_so400m_patch14_siglip_384.webli"]


@pytest.fixture(scope="module")
def retriever_generator(tmp_path_factory):
    """A tiny untrained retriever-generator (retriever with a document index + tiny SigPhi) and its processor."""
    from configuration import RetrieverGeneratorConfig
    from modeling import RetrieverGeneratorForMultipleChoice
    from processing import RetrieverGeneratorProcessor
    from train.bundled_data.retrieval_vqa import write_retrieval_vqa
    from train.retrieval.models import build_tiny_retriever
    from train.retrieval.task import load_retrieval_task
    from train.sigphi.tiny import build_tiny_sigphi

    data = tmp_path_factory.mktemp("retrieval-data")
    write_retrieval_vqa(data, n_train_catalogues=2, n_val_catalogues=1, n_test_catalogues=1, n_train_archive=4,
                        n_val_archive=2, n_test_archive=2, n_distractor_catalogues=1, n_distractor_drawings=2)
    task = load_retrieval_task(data / "train.csv")
    retriever, retriever_processor = build_tiny_retriever(task)
    retriever.build_document_index(task.corpus, retriever_processor)
    generator, generator_processor = build_tiny_sigphi()
    config = RetrieverGeneratorConfig.from_retriever_generator_configs(retriever.config, generator.config)
    model = RetrieverGeneratorForMultipleChoice(config, retriever=retriever, generator=generator).eval()
    return model, RetrieverGeneratorProcessor(retriever_processor, generator_processor), len(task.corpus)


LOAD_PUSHED_RETRIEVER_GENERATOR = """
import sys, json
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
print(json.dumps({"model": type(model).__name__, "documents": len(model.retriever.document_index)}))
"""


def test_the_retriever_generator_pushes_with_its_parts_index_and_card(retriever_generator, hub_uploads, tmp_path):
    model, processor, n_documents = retriever_generator
    model.push_to_hub("me/tiny-rag", processor=processor, datasets=["me/retrieval-vqa"])
    uploaded = hub_uploads["me/tiny-rag"]
    files = {p.relative_to(uploaded).as_posix() for p in uploaded.rglob("*") if p.is_file()}
    assert {"README.md", "config.json", "modeling_retriever_generator.py",
            "retriever/model.safetensors", "retriever/documents.faiss", "generator/model.safetensors",
            "generator/modeling_sigphi.py", "generator/chat_template.jinja"} <= files
    assert "model.safetensors" not in files  # each weight is stored once, in its part's folder
    assert not {Path(f).suffix for f in files} & PICKLE_SUFFIXES
    card = ModelCard.load(uploaded / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag is None  # not a pipeline model
    assert 'AutoModel.from_pretrained("me/tiny-rag", trust_remote_code=True)' in card.text

    result = hub_user_python(LOAD_PUSHED_RETRIEVER_GENERATOR, str(uploaded), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "model": "RetrieverGeneratorForMultipleChoice", "documents": n_documents}


# --- logging through report_to, and progress bars ----------------------------------------------------------------

@pytest.fixture(scope="module")
def small_digits(tmp_path_factory):
    return write_digits_dataset(tmp_path_factory.mktemp("logging-digits"), n_train=16)


def align_two_steps(model_dir, dataset, output_dir, report_to: str, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "train.align", "--model_name_or_path", str(model_dir), "--dataset", str(dataset),
         "--output_dir", str(output_dir), "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no",
         "--per_device_train_batch_size", "8", "--report_to", report_to, "--project", "sigphi-test"],
        capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def trained_dir(tiny_dir, small_digits, tmp_path_factory):
    """The output folder of two alignment steps logged to tensorboard (and the run's stderr)."""
    output = tmp_path_factory.mktemp("aligned-with-tensorboard")
    result = align_two_steps(tiny_dir, small_digits, output, "tensorboard")
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result.stderr


def test_report_to_tensorboard_logs_the_training_loss_with_a_progress_bar(trained_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output, stderr = trained_dir
    (run,) = {event_file.parent for event_file in output.glob("runs/*/events.out.tfevents.*")}
    events = EventAccumulator(str(run))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2]
    assert "2/2 [" in stderr  # the trainer's tqdm bar


def test_report_to_trackio_logs_the_training_loss(tiny_dir, small_digits, tmp_path):
    pytest.importorskip("trackio", reason="trackio is an optional logger (pip install trackio)")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRACKIO_DIR": str(tmp_path)}
    result = align_two_steps(tiny_dir, small_digits, tmp_path / "out", "trackio", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = sqlite3.connect(tmp_path / "sigphi-test.db").execute("SELECT * FROM metrics").fetchall()
    assert sum(b'"train/loss"' in cell for row in rows for cell in row if isinstance(cell, bytes)) == 2


def test_evaluation_shows_a_progress_bar(tiny, capsys):
    from datasets import Dataset

    from train.sigphi.evaluation import evaluate_sigphi

    model, processor = tiny
    rows = [conversation_row(random_image(seed), QUESTION, "7") for seed in range(3)]
    evaluate_sigphi(model, processor, Dataset.from_list(rows), batch_size=2, max_new_tokens=1)
    assert "evaluating: 100%" in capsys.readouterr().err


# --- security ----------------------------------------------------------------------------------------------------

NEVER_UNPICKLE = """
import pickle, sys, json, torch
def refuse(*args, **kwargs):
    raise RuntimeError("unpickling attempted")
class RefusingUnpickler(pickle.Unpickler):  # still a class: libraries subclass pickle.Unpickler at import
    load = refuse
pickle.load = pickle.loads = torch.load = refuse
pickle.Unpickler = RefusingUnpickler
try:
    torch.load(sys.argv[1] + "/training_args.bin")  # the trap is armed: the trainer's pickle cannot be read
except RuntimeError as error:
    armed = str(error)
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
AutoConfig.from_pretrained(sys.argv[1], trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True)
AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
print(json.dumps({"armed": armed, "loaded": type(model).__name__}))
"""


def test_a_trained_folder_keeps_its_weights_in_safetensors_and_loads_without_unpickling(trained_dir, tmp_path):
    output, _ = trained_dir
    pickles = sorted(p.name for p in output.iterdir() if p.suffix in PICKLE_SUFFIXES)
    assert pickles == ["training_args.bin"]  # the trainer's arguments, for --resume_from_checkpoint only
    assert (output / "model.safetensors").exists()
    result = hub_user_python(NEVER_UNPICKLE, str(output), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "armed": "unpickling attempted", "loaded": "SigPhiForConditionalGeneration"}


def saved_code_folders(tiny_dir, retriever_generator, tmp_path) -> dict[str, Path]:
    model, processor, _ = retriever_generator
    model.save_pretrained(tmp_path / "retriever-generator")
    return {"sigphi": tiny_dir, "retriever_generator": tmp_path / "retriever-generator"}


def project_source(name: str) -> str:
    """The source of the project's module file `name` (from configuration/, modeling/ or processing/)."""
    (path,) = [PROJECT_ROOT / package / name for package in PROJECT_PACKAGES
               if (PROJECT_ROOT / package / name).exists()]
    return path.read_text()


def imported_roots(tree: ast.Module, module_level: bool) -> set[str]:
    """Top-level names of absolute imports, at module level only or anywhere; relative imports give ''."""
    nodes = tree.body if module_level else list(ast.walk(tree))
    roots = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add("" if node.level else node.module.split(".")[0])
    return roots


def test_remote_code_is_this_projects_modules_importing_only_the_allowed_libraries(tiny_dir, retriever_generator,
                                                                                   tmp_path):
    for kind, folder in saved_code_folders(tiny_dir, retriever_generator, tmp_path).items():
        for path in folder.rglob("*.py"):
            source = path.read_text()
            assert source == with_relative_imports(project_source(path.name)), f"{kind}: {path} is not ours"

            tree = ast.parse(source)
            allowed = REMOTE_CODE_LIBRARIES | set(sys.stdlib_module_names) | {""}
            assert not imported_roots(tree, module_level=True) - allowed, f"{path} imports at module level"
            assert not imported_roots(tree, module_level=False) - allowed - REMOTE_CODE_LAZY_LIBRARIES, path
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level:
                    assert (path.parent / f"{node.module}.py").exists(), f"{path} imports a missing {node.module}"


IMPORT_AUDIT = """
import importlib, json, os, sys
sys.dont_write_bytecode = True
root, kinds = sys.argv[1], sys.argv[2:]
sys.path.insert(0, root)
modules = {kind: sorted(name[:-3] for name in os.listdir(os.path.join(root, kind)) if name.endswith(".py"))
           for kind in kinds}
for kind in kinds:  # a first copy loads every library module the code needs, so the audit sees only the code
    for name in modules[kind]:
        importlib.import_module(f"{kind}_warm_up.{name}")
events, current = {kind: [] for kind in kinds}, []
def audit(event, args):
    if current and (event == "open" or event.startswith(("socket.", "urllib.", "http.", "subprocess.", "os."))):
        events[current[-1]].append([event, [str(arg) for arg in args]])
sys.addaudithook(audit)
for kind in kinds:
    current.append(kind)
    for name in modules[kind]:
        importlib.import_module(f"{kind}.{name}")
def reads_itself(kind, event, args):  # the import system reading the package's own files
    folder = os.path.join(root, kind)
    return event == "open" and args[0].startswith(folder + os.sep) and args[1] == "r" or args == [folder]
print(json.dumps({kind: [e for e in events[kind] if not reads_itself(kind, *e)] for kind in kinds}))
"""


def audit_imports(folders: dict[str, Path], tmp_path: Path) -> dict[str, list]:
    """For each folder, the I/O and network events that importing its code files causes beyond reading them."""
    for kind, folder in folders.items():
        for package in (tmp_path / "audit" / kind, tmp_path / "audit" / f"{kind}_warm_up"):
            shutil.copytree(folder, package, ignore=shutil.ignore_patterns("*.safetensors", "*.faiss", "*.parquet"))
            (package / "__init__.py").write_text("")
    result = hub_user_python(IMPORT_AUDIT, str(tmp_path / "audit"), *folders, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_the_remote_code_does_no_file_or_network_io(tiny_dir, retriever_generator, tmp_path):
    folders = saved_code_folders(tiny_dir, retriever_generator, tmp_path)
    tampered = folders["tampered"] = tmp_path / "tampered"  # the control: code that writes a file when imported
    shutil.copytree(tiny_dir, tampered)
    with open(tampered / "configuration_sigphi.py", "a") as handle:
        handle.write(textwrap.dedent("""
            with open(__file__ + ".log", "w") as log:
                log.write("imported")
        """))
    events = audit_imports(folders, tmp_path)
    assert events["sigphi"] == [] and events["retriever_generator"] == []
    assert [event for event, _ in events["tampered"]] == ["open"]
