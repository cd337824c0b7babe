"""Regression gate for CI: compare one run record with bounds and, optionally, a baseline record.

``check_record`` returns the violated bounds. The ``nestbench check`` command prints one line
per violation and exits 1, or exits 0 when every bound holds. It exits 2 (a
``CheckInputError``) when a record is missing, unreadable or not successful, lacks a bounded
metric, or was measured under another protocol than its baseline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nestbench.errors import NestbenchError
from nestbench.records import RECORD_NAME


class CheckInputError(NestbenchError):
    """A record given to ``nestbench check`` cannot be used, or the bounds are invalid."""


@dataclass(frozen=True)
class Bounds:
    """Upper bounds as fractions in [0, 1]; None leaves a bound out. ``tolerance`` is added to each."""

    max_asr: float | None = None
    max_utility_drop: float | None = None
    max_over_refusal: float | None = None
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_asr", "max_utility_drop", "max_over_refusal", "tolerance"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                option = "--" + name.replace("_", "-")
                raise CheckInputError(
                    f"{option} {value} is outside [0, 1]; give a fraction, for example 0.3 for 30%"
                )
        if self.max_asr is None and self.max_utility_drop is None and self.max_over_refusal is None:
            raise CheckInputError("no bound given; pass --max-asr, --max-utility-drop or --max-over-refusal")


@dataclass(frozen=True)
class Violation:
    metric: str
    value: float
    bound: float

    def __str__(self) -> str:
        return f"{self.metric} = {self.value:.4f} exceeds bound {self.bound:.4f}"


def load_record(path: Path) -> tuple[Path, dict[str, Any]]:
    """Read a record from a ``record.json`` path or a run folder; return (file path, record)."""
    file = path / RECORD_NAME if path.is_dir() else path
    if not file.is_file():
        raise CheckInputError(f"run record not found: {path}; pass a record.json file or a run folder")
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckInputError(f"cannot read run record {file}: {err}") from err
    if not isinstance(record, dict) or ("metrics" not in record and "status" not in record):
        raise CheckInputError(f"{file} is not a nestbench run record (no 'status' or 'metrics' field)")
    if record.get("status") != "success":
        raise CheckInputError(
            f"run {record.get('run_id', file)} has status {record.get('status')!r}, so its metrics are incomplete; "
            "check a successful run"
        )
    return file, record


def find_baseline(record_file: Path, record: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    """Return the run's own ``none`` record when it sits in the same runs folder, else None."""
    baseline_id = record.get("baseline_run_id")
    if not baseline_id:
        return None
    candidate = record_file.parent.parent / baseline_id / RECORD_NAME
    return load_record(candidate) if candidate.is_file() else None


def protocol_differences(first: Any, second: Any, prefix: str = "") -> list[str]:
    """Return the dotted names of the protocol fields whose values differ, with both values."""
    if isinstance(first, dict) and isinstance(second, dict):
        differences = []
        for key in sorted(set(first) | set(second)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in first or key not in second:
                differences.append(f"{name} (present in only one record)")
            else:
                differences.extend(protocol_differences(first[key], second[key], name))
        return differences
    return [] if first == second else [f"{prefix}: {first!r} != {second!r}"]


def require_same_protocol(record: dict[str, Any], baseline: dict[str, Any]) -> None:
    if "protocol" not in record or "protocol" not in baseline:
        raise CheckInputError("a record has no 'protocol' field, so it cannot be compared; rerun it with this nestbench")
    differences = protocol_differences(record["protocol"], baseline["protocol"])
    if differences:
        raise CheckInputError(
            f"runs {record.get('run_id')} and {baseline.get('run_id')} were measured under different protocols "
            f"({'; '.join(differences)}); compare runs with the same model, data and evaluation settings"
        )


def _value(record: dict[str, Any], metric: str) -> float:
    entry = record.get("metrics", {}).get(metric)
    if entry is None or entry.get("value") is None:
        raise CheckInputError(f"run {record.get('run_id')} has no {metric!r} metric; evaluate it, or drop the bound")
    return float(entry["value"])


def asr_metrics(record: dict[str, Any]) -> list[str]:
    """Return the attack success rate metrics: every ``asr[<attack>]`` and ``unsafe_rate`` (no attack)."""
    metrics = record.get("metrics", {})
    names = sorted(key for key in metrics if key.startswith("asr["))
    if "unsafe_rate" in metrics:
        names.insert(0, "unsafe_rate")
    return names


def utility_metrics(record: dict[str, Any]) -> list[str]:
    return sorted(key for key in record.get("metrics", {}) if key.endswith("/acc"))


def check_record(
    record: dict[str, Any], bounds: Bounds, baseline: dict[str, Any] | None = None
) -> list[Violation]:
    """Return every bound that ``record`` violates; an empty list means the record passes.

    ``--max-asr`` bounds ``unsafe_rate`` and each ``asr[<attack>]``; ``--max-utility-drop``
    bounds the drop of each ``<task>/acc`` from ``baseline``, which must share the protocol.
    """
    violations = []
    if baseline is not None:
        require_same_protocol(record, baseline)
    if bounds.max_asr is not None:
        names = asr_metrics(record)
        if not names:
            raise CheckInputError(f"run {record.get('run_id')} has no attack success rate metric; evaluate an attack")
        limit = bounds.max_asr + bounds.tolerance
        violations += [Violation(name, _value(record, name), limit) for name in names if _value(record, name) > limit]
    if bounds.max_over_refusal is not None:
        limit = bounds.max_over_refusal + bounds.tolerance
        value = _value(record, "over_refusal")
        if value > limit:
            violations.append(Violation("over_refusal", value, limit))
    if bounds.max_utility_drop is not None:
        if baseline is None:
            raise CheckInputError("--max-utility-drop needs a baseline; pass --baseline with the none run's record")
        names = [name for name in utility_metrics(record) if name in baseline.get("metrics", {})]
        if not names:
            raise CheckInputError(
                f"runs {record.get('run_id')} and {baseline.get('run_id')} share no utility metric; "
                "evaluate the same utility tasks"
            )
        limit = bounds.max_utility_drop + bounds.tolerance
        for name in names:
            drop = _value(baseline, name) - _value(record, name)
            if drop > limit:
                violations.append(Violation(f"{name} drop", drop, limit))
    return violations
