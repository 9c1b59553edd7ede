"""Which code produced a result: the git commit, whether the code had uncommitted changes, and when.

The quickstart writes this into its metrics.json and `make bench` reads it back, so a figure copied into
BENCHMARKS.md can always be traced to the commit that produced it, and a figure older than the code is re-made
instead of reported."""

import subprocess
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
CODE_PATHS = ("configuration", "modeling", "processing", "train")


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=PROJECT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _uncommitted_code_changes() -> bool | None:
    status = _git("status", "--porcelain", "--", *CODE_PATHS)
    return bool(status) if status is not None else None


def code_revision() -> dict:
    """{'commit', 'uncommitted_code_changes', 'date'} of the code as it is now (commit None outside a git clone)."""
    return {"commit": _git("rev-parse", "HEAD"), "uncommitted_code_changes": _uncommitted_code_changes(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def staleness(revision: dict | None) -> str | None:
    """Why a result made at `revision` does not describe the code as it is now, or None when it does."""
    if not revision or not revision.get("commit"):
        return "the result records no commit"
    if revision.get("uncommitted_code_changes"):
        return f"it was made with uncommitted code changes on top of {revision['commit'][:7]}"
    if _uncommitted_code_changes():
        return "the code has uncommitted changes now"
    last_code_commit = _git("log", "-1", "--format=%H", "--", *CODE_PATHS)
    if last_code_commit and _git("merge-base", "--is-ancestor", last_code_commit, revision["commit"]) is None:
        return f"the code changed after {revision['commit'][:7]} (last change: {last_code_commit[:7]})"
    return None
