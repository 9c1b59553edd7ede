"""`train/` as a menu: its top level holds the runnable steps only, the helpers they use live one level down, no
module of `train` takes part in an import cycle, and the constants the steps and models share are defined once."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "train"
STEPS = {"align", "build_model", "demo", "evaluate", "evaluate_retriever_generator", "generate_dataset",
         "make_dataset", "merge_lora", "quickstart", "sft", "train_retriever_generator"}
SOURCE_DIRS = ("configuration", "modeling", "processing", "train", "bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


TRAIN_MODULES = sorted(module_name(path) for path in TRAIN.rglob("*.py"))


def train_imports(path: Path) -> set[str]:
    """The `train` modules `path` imports anywhere in it (module level or inside functions)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            imported.update(name for name in names if name in TRAIN_MODULES and name != "train")
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names if alias.name in TRAIN_MODULES)
    return imported


def test_the_top_level_holds_the_runnable_steps_and_nothing_else():
    top_level = {path.stem for path in TRAIN.glob("*.py")} - {"__init__"}
    assert top_level == STEPS
    for step in sorted(STEPS):
        tree = ast.parse((TRAIN / f"{step}.py").read_text(encoding="utf-8"))
        assert any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body), step
        guards = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "__name__ == '__main__'", '__name__ == "__main__"')]
        assert guards, f"train/{step}.py has no `if __name__ == \"__main__\"` guard"


def test_helpers_live_in_subpackages_and_never_import_a_step():
    """Steps use helpers; only the quickstart, which runs the other steps, imports steps."""
    helpers = [path for path in TRAIN.rglob("*.py") if path.parent != TRAIN]
    assert helpers and all((path.parent / "__init__.py").is_file() for path in helpers)
    for path in helpers:
        steps = {name for name in train_imports(path) if name.removeprefix("train.") in STEPS}
        assert not steps, f"{path.relative_to(ROOT)} imports the step(s) {sorted(steps)}"
    for step in sorted(STEPS - {"quickstart"}):
        steps = {name for name in train_imports(TRAIN / f"{step}.py") if name.removeprefix("train.") in STEPS}
        assert not steps, f"train/{step}.py imports the step(s) {sorted(steps)}"


def test_no_import_cycle_among_train_modules_even_through_imports_inside_functions():
    graph = {module_name(path): train_imports(path) for path in TRAIN.rglob("*.py")}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                cycle = trail[trail.index(imported):] + [imported]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if imported not in state:
                visit(imported, trail + [imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_every_train_module_imports_first():
    """Each module imported with no `train` module loaded before it (one process; `train.*` dropped from
    `sys.modules` between modules), so a cycle that breaks only some import orders fails here."""
    script = (
        "import importlib, sys\n"
        f"for name in {TRAIN_MODULES!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'train' or m.startswith('train.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as error:\n"
        "        print(f'{name}: {type(error).__name__}: {error}')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "", result.stdout


def definition_sites(pattern: str) -> list[str]:
    """Files of the source tree (not tests, docs or saved folders) whose text matches `pattern`."""
    sites = []
    for directory in SOURCE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            if re.search(pattern, path.read_text(encoding="utf-8"), re.MULTILINE):
                sites.append(str(path.relative_to(ROOT)))
    return sites


@pytest.mark.parametrize("pattern, site", [
    (r"^IGNORE_INDEX = ", "processing/processing_sigphi.py"),
    (re.escape("qkv_proj|o_proj|gate_up_proj|down_proj"), "train/sigphi/qlora.py"),
    (re.escape("is_bf16_supported()"), "train/common/precision.py"),
])
def test_shared_constants_and_decisions_are_defined_once(pattern, site):
    assert definition_sites(pattern) == [site]


def test_the_document_placeholder_is_defined_once_per_package_that_cannot_import_the_other():
    """configuration/ and processing/ files cannot import each other (see processing_retriever_generator.py), so the
    placeholder has one definition in each, and they must agree; nothing else defines it."""
    from configuration import configuration_retriever_generator
    from processing import processing_retriever_generator

    assert definition_sites(r"^DOCUMENT_PLACEHOLDER = ") == ["configuration/configuration_retriever_generator.py",
                                                             "processing/processing_retriever_generator.py"]
    assert configuration_retriever_generator.DOCUMENT_PLACEHOLDER == processing_retriever_generator.DOCUMENT_PLACEHOLDER
