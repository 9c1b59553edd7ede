"""Fail early and clearly when a generic top-level name belongs to another installed distribution."""

import importlib


def require_project_module(name: str, expected_attribute: str) -> None:
    """Import `name` and check it is this project's package (it defines `expected_attribute`)."""
    module = importlib.import_module(name)
    if not hasattr(module, expected_attribute):
        raise ImportError(
            f"The module {name!r} imported from {getattr(module, '__file__', '?')} is not this project's "
            f"(it lacks {expected_attribute}); another installed distribution uses the same top-level name. "
            "Uninstall it or run from the project root."
        )
