"""The wheel must carry the recipes and lm-eval tasks, so a non-editable install works."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from nestbench.resources import recipes_dir, tasks_dir

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_recipes_and_tasks(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(tmp_path)],
        check=True,
    )
    wheel = next(tmp_path.glob("nestbench-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = {f"nestbench/_recipes/{p.name}" for p in recipes_dir().glob("*.yaml")}
    tasks = {f"nestbench/_tasks/{p.name}" for p in tasks_dir().iterdir() if p.is_file() and p.suffix != ".pyc"}
    assert len(recipes) == 5
    assert recipes <= names
    assert tasks <= names
    assert "nestbench/_tasks/utils.py" in names
