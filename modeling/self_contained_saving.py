"""Make a saved model folder load with `trust_remote_code=True` where this project is not installed.

transformers copies a custom class's module file (and the files it imports *relatively*) next to the
weights. In the source tree the modeling files import their config class from the sibling top-level
package (`from configuration.configuration_sigphi import ...`), which a Hub user does not have.
After `save_pretrained` we therefore rewrite those imports to same-folder relative imports, copy any
project module that is still missing, and list every Auto class in `config.json`'s `auto_map`
(a class holds a single `_auto_class`, so transformers writes only one entry by itself).

Uploading goes through the same path: `save_pretrained(..., push_to_hub=True)` and `push_to_hub(...)` both save,
fix the folder up, add a model card (see `model_card.py`) and upload that finished folder in one commit.
transformers' own push would upload before the fix-up and with a blank card.

This file is copied into saved folders (the modeling files import it), so it imports only the standard library and
a sibling module at module level, and huggingface_hub where an upload is done.
"""

import importlib.util
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from .model_card import build_model_card

PROJECT_PACKAGES = ("configuration", "modeling", "processing")
_PROJECT_IMPORT = re.compile(rf"^from ({'|'.join(PROJECT_PACKAGES)})\.(\w+) import", re.MULTILINE)
UPLOAD_KWARGS = ("commit_message", "commit_description", "create_pr", "private", "revision")
# Never uploaded: pickle-format files (a trainer's training_args.bin, optimizer and RNG states) and checkpoints.
NOT_UPLOADED = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", "checkpoint-*", "runs/*"]
CARD_KWARGS = ("base_model", "datasets", "metrics", "tags")


def auto_map_entry(cls: type) -> str:
    """`module_file.ClassName` as `auto_map` expects, valid in the source tree and in a remote copy."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def with_relative_imports(source: str) -> str:
    """`source` with its absolute imports of project modules made same-folder relative ones."""
    return _PROJECT_IMPORT.sub(r"from .\2 import", source)


def rewrite_project_imports(folder: str | Path) -> list[str]:
    """Turn absolute imports of project modules into relative ones, copying missing modules in.

    Returns the names of the files that were copied. Idempotent: a folder saved from a remote-code copy
    already has relative imports only, so nothing changes.
    """
    folder = Path(folder)
    pending = sorted(folder.glob("*.py"))
    copied = []
    while pending:
        path = pending.pop()
        source = path.read_text(encoding="utf-8")
        imported = _PROJECT_IMPORT.findall(source)
        if not imported:
            continue
        path.write_text(with_relative_imports(source), encoding="utf-8")
        for package, module in imported:
            target = folder / f"{module}.py"
            if target.exists():
                continue
            spec = importlib.util.find_spec(f"{package}.{module}")
            if spec is None or spec.origin is None:
                raise FileNotFoundError(f"{path.name} imports {package}.{module}, which cannot be found to copy")
            shutil.copyfile(spec.origin, target)
            copied.append(target.name)
            pending.append(target)
    return copied


def push_folder_to_hub(folder: str | os.PathLike, repo_id: str, token: str | bool | None = None,
                       private: bool | None = None, **upload_kwargs) -> str:
    """Create `repo_id` if needed and upload the finished `folder` (less `NOT_UPLOADED`) in one commit; returns the
    commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, exist_ok=True, private=private).repo_id
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), ignore_patterns=NOT_UPLOADED, **upload_kwargs)
    return str(commit.commit_url)


class SelfContainedSaveMixin:
    """`save_pretrained` that leaves a self-contained folder, and uploads that folder (with a model card) when asked.

    Subclasses declare `extra_auto_classes`: Auto class name -> attribute name of the class to map
    (resolved lazily because the classes are defined after the mixin).
    """

    extra_auto_classes: dict[str, str] = {}

    def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, **kwargs):
        """transformers' `save_pretrained`, then the fix-up; with `push_to_hub=True` (and optionally `repo_id`,
        `commit_message`, `create_pr`, `private`, `revision`, `token`, and for the card `base_model`, `datasets`,
        `metrics`, `tags`) the fixed folder gets a model card and is uploaded. Returns the commit URL when pushing.

        Under FSDP2 the model's class is a `FSDP<Name>` subclass that torch made at `fully_shard`; saving with it
        would record `FSDP<Name>` as the architecture and copy torch's files as the model's code, so the model
        carries its own class while it is saved (the trainer passes the gathered state dict)."""
        sharded_class = type(self)
        own_class = next(cls for cls in sharded_class.__mro__ if not cls.__module__.startswith("torch.distributed"))
        self.__class__ = own_class
        try:
            return self._save_self_contained(save_directory, *args, push_to_hub=push_to_hub, **kwargs)
        finally:
            self.__class__ = sharded_class

    def _save_self_contained(self, save_directory, *args, push_to_hub: bool = False, **kwargs):
        upload_kwargs = {key: kwargs.pop(key) for key in UPLOAD_KWARGS if key in kwargs}
        card_kwargs = {key: kwargs.pop(key) for key in CARD_KWARGS if key in kwargs}
        repo_id = kwargs.pop("repo_id", Path(save_directory).name)
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map["AutoConfig"] = auto_map_entry(type(self.config))
        module = sys.modules[type(self).__module__]
        for auto_class, class_name in self.extra_auto_classes.items():
            auto_map[auto_class] = auto_map_entry(getattr(module, class_name))
        self.config.auto_map = auto_map
        super().save_pretrained(save_directory, *args, push_to_hub=False, **kwargs)
        rewrite_project_imports(save_directory)
        if push_to_hub and kwargs.get("is_main_process", True):
            card = build_model_card(self.config, repo_id, save_directory, **card_kwargs)
            card.save(os.path.join(save_directory, "README.md"))
            return push_folder_to_hub(save_directory, repo_id, token=kwargs.get("token"), **upload_kwargs)
        return None

    def push_to_hub(self, repo_id: str, *, processor=None, base_model: list[str] | None = None,
                    datasets: list[str] | None = None, metrics: dict[str, float] | None = None,
                    tags: list[str] | None = None, max_shard_size: int | str = "50GB", **upload_kwargs) -> str:
        """Upload the model, and `processor` if given, as one self-contained folder with a model card.

        The same path as `save_pretrained(folder, push_to_hub=True)`, in a temporary folder. `upload_kwargs`:
        `commit_message`, `commit_description`, `private`, `token`, `revision`, `create_pr`. Returns the commit URL.
        """
        with tempfile.TemporaryDirectory() as folder:
            if processor is not None:
                processor.save_pretrained(folder)
            return self.save_pretrained(folder, push_to_hub=True, repo_id=repo_id, max_shard_size=max_shard_size,
                                        base_model=base_model, datasets=datasets, metrics=metrics, tags=tags,
                                        **upload_kwargs)
