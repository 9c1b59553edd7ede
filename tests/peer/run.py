"""transformers' own common tests, run against SigPhi for the locked and the newest transformers.

    python -m tests.peer.run                  # what `make test-peer` (and CI) runs
    python -m tests.peer.run --only locked -- -k test_training   # extra arguments go to pytest

For each environment, the test files of the *installed* transformers version are taken from its PyPI sdist
(`pip download --no-binary :all: --no-deps transformers==V`, cached), assembled into a suite with the project's
testers (`sigphi_model_tests.py`, `sigphi_processor_tests.py`) placed where transformers keeps a model's tests, and
run with pytest. The sdist ships `tests/*.py` only: the few modules the common tests import from elsewhere are
stood in by `tests/peer/stubs/` (each says what it replaces and what is therefore not run).

Environments: `locked` is this project's venv; `newest` is the compatibility matrix's newest venv (built by
`tests.compat.matrix`; the project is put on `PYTHONPATH`, pytest and parameterized are added to it).
Prints passed / failed / skipped per environment, and every skip with its reason; exits non-zero on a failure.
"""

import argparse
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from tests.compat.matrix import CACHE, ROOT, ensure_venv, environments, run, shared_torch

HERE = Path(__file__).resolve().parent
TESTERS = {"sigphi_model_tests.py": "test_modeling_sigphi.py", "sigphi_processor_tests.py": "test_processing_sigphi.py"}
PYTEST_INI = "[pytest]\naddopts = -p no:cacheprovider\nmarkers =\n    flash_attn_test\n    flash_attn_3_test\n"


def transformers_version(python: Path) -> str:
    return run([python, "-c", "import transformers; print(transformers.__version__)"], check=True).stdout.strip()


def sdist_tests(version: str) -> Path:
    """`tests/` of transformers `version`'s sdist, downloaded once into the cache."""
    target = CACHE / "peer" / f"transformers-{version}-tests"
    if (target / "test_modeling_common.py").exists():
        return target
    with tempfile.TemporaryDirectory() as download:
        run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
             f"transformers=={version}", "-d", download], check=True)
        archive = next(Path(download).glob("transformers-*.tar.gz"))
        with tarfile.open(archive) as tar:
            prefix = f"{archive.name.removesuffix('.tar.gz')}/tests/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
            for member in members:
                member.name = member.name.removeprefix(prefix)
            target.mkdir(parents=True, exist_ok=True)
            tar.extractall(target, members=members, filter="data")
    return target


def assemble_suite(version: str, suite: Path) -> Path:
    """transformers' common tests + stand-ins + SigPhi's testers under `suite/`; returns the SigPhi test folder."""
    shutil.copytree(sdist_tests(version), suite / "tests")
    shutil.copytree(HERE / "stubs", suite, dirs_exist_ok=True)
    models = suite / "tests" / "models" / "sigphi"
    models.mkdir(parents=True)
    for package in (suite / "tests", suite / "tests" / "models", models, suite / "tests" / "exporters",
                    suite / "tests" / "generation"):
        (package / "__init__.py").touch()
    for source, name in TESTERS.items():
        shutil.copyfile(HERE / source, models / name)
    (suite / "pytest.ini").write_text(PYTEST_INI)
    return models


def summary_counts(output: str) -> dict[str, int]:
    last = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    return {kind: int(count) for count, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last[-1])} \
        if last else {}


def skip_reasons(output: str) -> dict[str, int]:
    """pytest's `SKIPPED [n] file:line: reason` lines, counted by reason (the file and line vary, the reason not)."""
    reasons = {}
    for count, reason in re.findall(r"^SKIPPED \[(\d+)\] [^:]+:\d+: (.*)$", output, re.MULTILINE):
        reasons[reason] = reasons.get(reason, 0) + int(count)
    return reasons


def run_suite(name: str, python: Path, pytest_args: list[str]) -> tuple[dict[str, int], str]:
    version = transformers_version(python)
    with tempfile.TemporaryDirectory(prefix="sigphi-peer-") as tmp:
        suite = Path(tmp)
        models = assemble_suite(version, suite)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
               "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}
        result = run([python, "-m", "pytest", "-q", "-rfEs", "-p", "no:randomly", models.relative_to(suite),
                      *pytest_args], cwd=suite, env=env, timeout=1800)
    failures = "\n".join(line for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR")))
    print(f"=== {name}: transformers {version}\n{failures}\n{result.stdout.splitlines()[-1:]}\n"
          f"{result.stderr[-3000:]}\nskipped, by reason:", flush=True)
    for reason, count in sorted(skip_reasons(result.stdout).items(), key=lambda item: -item[1]):
        print(f"  {count:3d}  {reason}")
    return summary_counts(result.stdout), version


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["locked", "newest"])
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    pythons = {"locked": Path(sys.executable)}
    if args.only != "locked":
        newest = ensure_venv("newest", environments()["newest"], shared_torch())
        run([newest, "-m", "pip", "install", "-q", "pytest", "parameterized"], check=True)
        pythons["newest"] = newest
    results = {name: run_suite(name, python, args.pytest_args) for name, python in pythons.items()
               if args.only in (None, name)}
    print("\npeer suite (transformers' ModelTesterMixin + ProcessorTesterMixin on SigPhi)")
    failed = 0
    for name, (counts, version) in results.items():
        failed += counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0) + (not counts)
        print(f"{name} (transformers {version}): {counts or 'no result: the run did not finish'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
