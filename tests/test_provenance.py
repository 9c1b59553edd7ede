"""A result records the commit that made it, and one older than the code is recognised as stale (`make bench`)."""

import subprocess

import pytest

from train.common.provenance import CODE_PATHS, PROJECT, code_revision, staleness


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=PROJECT, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def last_code_commit() -> str:
    try:
        return git("log", "-1", "--format=%H", "--", *CODE_PATHS)
    except (OSError, subprocess.CalledProcessError):
        pytest.fail("the tests run in a git clone (CI clones the repository)")


def test_a_revision_names_the_checked_out_commit():
    revision = code_revision()
    assert revision["commit"] == git("rev-parse", "HEAD")
    assert revision["uncommitted_code_changes"] == bool(git("status", "--porcelain", "--", *CODE_PATHS))


def test_a_result_from_before_the_last_code_change_is_stale(last_code_commit):
    parent = git("rev-parse", f"{last_code_commit}^")
    reason = staleness({"commit": parent, "uncommitted_code_changes": False})
    assert reason and "changed after" in reason or "uncommitted changes now" in reason


def test_a_result_without_a_commit_or_with_uncommitted_code_is_stale(last_code_commit):
    assert staleness(None) == "the result records no commit"
    assert "uncommitted code changes" in staleness({"commit": last_code_commit, "uncommitted_code_changes": True})


def test_a_result_of_the_current_code_is_current(last_code_commit):
    if code_revision()["uncommitted_code_changes"]:
        assert staleness({"commit": last_code_commit, "uncommitted_code_changes": False}) == \
            "the code has uncommitted changes now"
    else:
        assert staleness({"commit": git("rev-parse", "HEAD"), "uncommitted_code_changes": False}) is None
