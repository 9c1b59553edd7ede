"""Make a saved model folder load with `trust_remote_code=True` where this project is not installed.

transformers copies a custom class's module file (and the files it imports *relatively*) next to the
weights. In the source tree the modeling files import their config class from the sibling top-level
package (`from configuration.configuration_sigphi import ...`), which a Hub user does not have.
After `save_pretrained` we therefore rewrite those imports to same-folder relative imports, copy any
project module that is still missing, and list every Auto class in `config.json`'s `auto_map`
(a class holds a single `_auto_class`, so transformers writes only one entry by itself).
"""

import importlib.util
import re
import shutil
import sys
from pathlib import Path

PROJECT_PACKAGES = ("configuration", "modeling", "processing")
_PROJECT_IMPORT = re.compile(rf"^from ({'|'.join(PROJECT_PACKAGES)})\.(\w+) import", re.MULTILINE)


def auto_map_entry(cls: type) -> str:
    """`module_file.ClassName` as `auto_map` expects, valid in the source tree and in a remote copy."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


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
        path.write_text(_PROJECT_IMPORT.sub(r"from .\2 import", source), encoding="utf-8")
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


def push_folder_to_hub(folder: str | Path, repo_id: str, **hub_kwargs) -> str:
    """Upload a finished folder, so the Hub gets exactly what loads locally (after the import rewrite)."""
    from huggingface_hub import HfApi

    api = HfApi(token=hub_kwargs.pop("token", None))
    private = hub_kwargs.pop("private", None)
    repo_id = api.create_repo(repo_id, exist_ok=True, private=private).repo_id
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), **hub_kwargs)
    return repo_id


class SelfContainedSaveMixin:
    """`save_pretrained` that leaves a self-contained folder, and uploads that folder when asked to.

    Subclasses declare `extra_auto_classes`: Auto class name -> attribute name of the class to map
    (resolved lazily because the classes are defined after the mixin).
    """

    extra_auto_classes: dict[str, str] = {}

    def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, **kwargs):
        hub_kwargs = {key: kwargs.pop(key) for key in ("repo_id", "commit_message", "create_pr", "private") if key in kwargs}
        if kwargs.get("token") is not None:
            hub_kwargs["token"] = kwargs["token"]
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map["AutoConfig"] = auto_map_entry(type(self.config))
        module = sys.modules[type(self).__module__]
        for auto_class, class_name in self.extra_auto_classes.items():
            auto_map[auto_class] = auto_map_entry(getattr(module, class_name))
        self.config.auto_map = auto_map
        super().save_pretrained(save_directory, *args, push_to_hub=False, **kwargs)
        rewrite_project_imports(save_directory)
        if push_to_hub:
            repo_id = hub_kwargs.pop("repo_id", Path(save_directory).name)
            push_folder_to_hub(save_directory, repo_id, **hub_kwargs)
