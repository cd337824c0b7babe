"""Run records: one self-describing JSON per run, written atomically, plus the generations file."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from nestbench.errors import NestbenchError, RecordWriteError

logger = logging.getLogger(__name__)

RECORD_NAME = "record.json"
GENERATIONS_NAME = "generations.jsonl"
SCHEMA_VERSION = 1
_LIBRARIES = ("nestbench", "torch", "transformers", "peft", "lm_eval", "datasets", "scikit-learn", "safetensors", "gguf")
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_id(text: str) -> str:
    """Return ``text`` reduced to letters, digits, '.', '_' and '-', safe as one path component."""
    cleaned = _SAFE_ID.sub("-", text).strip(".-")
    return cleaned[:120] or "run"


def new_run_id(method: str, model_spec: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    model_slug = Path(model_spec.rstrip("/")).name or model_spec
    return sanitize_id(f"{stamp}-{method}-{model_slug}")


def run_dir(results_dir: Path, run_id: str) -> Path:
    """Return the folder of a run, refusing ids that would leave the results folder."""
    safe = sanitize_id(run_id)
    if safe != run_id:
        raise NestbenchError(f"invalid run id {run_id!r}: use letters, digits, '.', '_' and '-' only (e.g. {safe!r})")
    return results_dir / "runs" / run_id


def atomic_write_text(path: Path, text: str, *, private: bool = False) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it, so readers never see half a file.

    ``private`` makes the file readable by its owner only (mode 0600), for files that hold
    harmful prompts or generated text. On a failed write (disk full, no permission) the
    previous version of ``path`` is left unchanged and ``RecordWriteError`` names the file.
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600 if private else 0o644)
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise RecordWriteError(
            f"failed to write {path}: {err.strerror or err}. Its previous version, if any, is unchanged. "
            "Free space on that disk or pass --results-dir on a writable disk with room, then resume the run "
            "with nestbench run --resume RUN_ID"
        ) from err
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def write_record(directory: Path, record: dict[str, Any]) -> Path:
    path = directory / RECORD_NAME
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False, default=str) + "\n")
    return path


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]], *, private: bool = False) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), private=private)


def read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise NestbenchError(f"cannot read run record {path}: {err}") from err


def iter_records(results_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Yield (folder, record) for every readable record under ``results_dir/runs``; skip others with a warning."""
    runs = results_dir / "runs"
    if not runs.is_dir():
        return
    for path in sorted(runs.glob(f"*/{RECORD_NAME}")):
        try:
            yield path.parent, json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("skipping unreadable record %s: %s", path, err)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_json(value: Any) -> str:
    return sha256_text(json.dumps(value, sort_keys=True, default=str))


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return versions


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    """Return the commit and dirty flag of the nestbench checkout, or nulls outside a git checkout."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, check=True, timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
