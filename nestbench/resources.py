"""Find the recipe and task folders, in a source checkout or inside an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _find(packaged: str, top_level: str) -> Path:
    # A wheel carries the folders inside the package; an editable install or a source
    # checkout reads them from the repository root.
    inside = _PACKAGE_DIR / packaged
    if inside.is_dir():
        return inside
    return _PACKAGE_DIR.parent / top_level


def recipes_dir() -> Path:
    return _find("_recipes", "methods")


def tasks_dir() -> Path:
    return _find("_tasks", "tasks")
