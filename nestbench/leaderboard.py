"""Leaderboards built from run records only: one row per (model, method), in four formats.

``build_leaderboard`` leaves out the runs that are not comparable results unless the caller
includes them: quick profile, ``--limit``, not successful, or made from a checkout with
uncommitted changes. It keeps the newest run of each (model, method) and computes each
utility metric's change from the model's ``none`` row. ``render`` writes the result as
markdown, CSV, LaTeX (booktabs) or JSON.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from nestbench.errors import NestbenchError
from nestbench.records import RECORD_NAME
from nestbench.table import format_count, half_width

logger = logging.getLogger(__name__)

FORMATS = ("markdown", "csv", "latex", "json")
LOWER, HIGHER = "lower", "higher"
_ARROWS = {LOWER: "↓", HIGHER: "↑"}
_LATEX_ARROWS = {LOWER: r"$\downarrow$", HIGHER: r"$\uparrow$"}
_UTILITY_METRIC = "acc"


@dataclass(frozen=True)
class Column:
    """One metric column: its record key, title, better direction and how its cells are computed."""

    key: str
    title: str
    direction: str | None
    kind: str  # "rate" (a record metric), "delta" (change from none), "count" or "seconds"


@dataclass(frozen=True)
class Filters:
    """Switches that bring back the runs a leaderboard leaves out by default."""

    include_quick: bool = False
    include_limited: bool = False
    include_failed: bool = False
    include_dirty: bool = False


@dataclass
class Leaderboard:
    """Rows, columns and the runs left out, ready for ``render``."""

    columns: list[Column]
    rows: list[dict[str, Any]]
    excluded: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    source: str = ""


# The reasons a run is left out, with the option that brings it back (None: cannot be included).
_REASONS = {
    "quick": ("quick profile", "--include-quick"),
    "limited": ("limited (--limit)", "--include-limited"),
    "failed": ("not successful", "--include-failed"),
    "dirty": ("uncommitted changes in the nestbench checkout", "--include-dirty"),
    "superseded": ("superseded by a newer run of the same model and method", None),
}


def find_records(results_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Return (folder, record) for every record under ``results_dir/runs`` or ``results_dir``.

    Raises NestbenchError when the folder does not exist or a record cannot be parsed, because
    a leaderboard that silently drops a run would misreport the exclusions.
    """
    if not results_dir.is_dir():
        raise NestbenchError(f"results folder not found: {results_dir}; pass the folder given to --results-dir")
    runs = results_dir / "runs"
    base = runs if runs.is_dir() else results_dir
    found = []
    for path in sorted(base.glob(f"*/{RECORD_NAME}")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise NestbenchError(f"cannot read run record {path}: {err}; fix or delete the file") from err
        if not isinstance(record, dict) or "method" not in record or "model" not in record:
            raise NestbenchError(f"{path} is not a nestbench run record (no 'method' or 'model' field)")
        found.append((path.parent, record))
    return found


def exclusion_reasons(record: dict[str, Any], filters: Filters) -> list[str]:
    """Return the keys of ``_REASONS`` that leave ``record`` out under ``filters``."""
    reasons = []
    if record.get("quick") and not filters.include_quick:
        reasons.append("quick")
    if record.get("limited") and not filters.include_limited:
        reasons.append("limited")
    if record.get("status") != "success" and not filters.include_failed:
        reasons.append("failed")
    dirty = record.get("environment", {}).get("git", {}).get("dirty")
    if dirty and not filters.include_dirty:
        reasons.append("dirty")
    return reasons


def model_name(record: dict[str, Any]) -> str:
    return str(record.get("model", {}).get("spec", "?"))


def _sort_time(record: dict[str, Any]) -> str:
    return str(record.get("finished") or record.get("created") or "")


def select_records(
    records: Iterable[dict[str, Any]], filters: Filters
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Keep the newest included record per (model, method); return it and the excluded run ids by reason."""
    excluded: dict[str, list[str]] = {}
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in sorted(records, key=_sort_time):
        reasons = exclusion_reasons(record, filters)
        for reason in reasons:
            excluded.setdefault(reason, []).append(record.get("run_id", "?"))
        if reasons:
            continue
        key = (model_name(record), record["method"])
        if key in newest:
            excluded.setdefault("superseded", []).append(newest[key].get("run_id", "?"))
        newest[key] = record
    return list(newest.values()), excluded


def _columns(records: Sequence[dict[str, Any]]) -> list[Column]:
    keys = {key for record in records for key in record.get("metrics", {})}
    attacks = sorted(key for key in keys if key.startswith("asr["))
    utility = sorted(key for key in keys if key.endswith(f"/{_UTILITY_METRIC}"))
    columns = [Column(key, f"ASR {key[4:-1]}", LOWER, "rate") for key in attacks]
    if "asr_mean" in keys:
        columns.append(Column("asr_mean", "ASR mean", LOWER, "rate"))
    columns.append(Column("unsafe_rate", "unsafe rate", LOWER, "rate"))
    if "over_refusal" in keys:
        columns.append(Column("over_refusal", "over-refusal", LOWER, "rate"))
    columns.append(Column("degenerate", "degenerate", LOWER, "rate"))
    for key in utility:
        task = key.split("/")[0]
        columns.append(Column(key, f"{task} acc", HIGHER, "rate"))
        columns.append(Column(f"delta:{key}", f"Δ {task} acc", HIGHER, "delta"))
    columns.append(Column("trainable_parameters", "trainable params", None, "count"))
    columns.append(Column("tune_seconds", "tuning time (s)", None, "seconds"))
    return columns


def _cell(record: dict[str, Any], column: Column, baseline: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return a cell as ``{"value", "half_width", "n"}`` (rates in %), or None when there is no value."""
    metrics = record.get("metrics", {})
    if column.kind == "rate":
        metric = metrics.get(column.key)
        if not metric:
            return None
        half = half_width(metric)
        return {"value": 100 * metric["value"], "half_width": None if half is None else 100 * half, "n": metric.get("n")}
    if column.kind == "delta":
        key = column.key.split(":", 1)[1]
        if baseline is None or key not in metrics or key not in baseline.get("metrics", {}):
            return None
        if baseline.get("protocol_key") != record.get("protocol_key"):
            return None
        return {"value": 100 * (metrics[key]["value"] - baseline["metrics"][key]["value"]), "half_width": None, "n": None}
    if column.kind == "count":
        value = record.get("trainable_parameters")
        return None if value is None else {"value": value, "half_width": None, "n": None}
    seconds = record.get("timings", {}).get("tune")
    return None if seconds is None else {"value": seconds, "half_width": None, "n": None}


def _baseline_for(record: dict[str, Any], nones: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """Return the ``none`` record a method's utility change is measured against.

    The run's own baseline (``baseline_run_id``) comes first, then the newest ``none`` run
    of the same model with the same protocol.
    """
    candidates = nones.get(model_name(record), [])
    for candidate in candidates:
        if candidate.get("run_id") == record.get("baseline_run_id"):
            return candidate
    matching = [c for c in candidates if c.get("protocol_key") == record.get("protocol_key")]
    return matching[-1] if matching else None


def build_leaderboard(
    records: Sequence[dict[str, Any]],
    filters: Filters = Filters(),
    source: str = "",
) -> Leaderboard:
    """Build the leaderboard from ``records``; see the module docstring for the selection rules."""
    all_nones: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(records, key=_sort_time):
        if record.get("method") == "none" and record.get("status") == "success":
            all_nones.setdefault(model_name(record), []).append(record)

    selected, excluded = select_records(records, filters)
    selected.sort(key=lambda r: (model_name(r), r["method"] != "none", r["method"]))
    columns = _columns(selected)
    rows = []
    for record in selected:
        baseline = None if record["method"] == "none" else _baseline_for(record, all_nones)
        rows.append({
            "model": model_name(record),
            "method": record["method"],
            "run_id": record.get("run_id"),
            "status": record.get("status"),
            "baseline_run_id": None if baseline is None else baseline.get("run_id"),
            "cells": {column.key: _cell(record, column, baseline) for column in columns},
        })
    return Leaderboard(columns, rows, excluded, _notes(selected), source)


def _judge_label(judge: dict[str, Any]) -> str:
    name = str(judge.get("name", "?"))
    return name if judge.get("version") is None else f"{name} (version {judge['version']})"


def _notes(records: Sequence[dict[str, Any]]) -> list[str]:
    """Describe the protocol behind the numbers: judges, generation length, profiles and flags."""
    if not records:
        return []
    judges = sorted({_judge_label(r.get("judge", {})) for r in records})
    tokens = sorted({str(r.get("evaluation", {}).get("max_gen_toks", "?")) for r in records})
    profiles = sorted({str(r.get("profile", {}).get("name", "?")) for r in records})
    notes = [
        f"judge: {', '.join(judges)}",
        f"safety: {', '.join(tokens)} new tokens, greedy, chat template",
        "rates and accuracies in %, ± the half-width of the 95% interval (Wilson for rates, 1.96 × stderr for accuracy)",
        "Δ: change from the model's none row in points",
        f"profile: {', '.join(profiles)}",
    ]
    if any(r.get("quick") for r in records):
        notes.append("includes quick-profile runs (subsets; not paper-scale results)")
    if any(r.get("limited") for r in records):
        notes.append("includes LIMITED runs (--limit): not real results")
    if any(r.get("status") != "success" for r in records):
        notes.append("includes runs that did not succeed")
    for model in sorted({model_name(r) for r in records}):
        protocols = {r.get("protocol_key") for r in records if model_name(r) == model}
        if len(protocols) > 1:
            notes.append(f"rows of {model} were measured under {len(protocols)} different protocols "
                         "(model, data or evaluation settings), so they are not directly comparable")
    if any(r.get("environment", {}).get("git", {}).get("dirty") for r in records):
        notes.append("includes runs made from a nestbench checkout with uncommitted changes")
    return notes


def exclusion_summary(leaderboard: Leaderboard) -> str:
    """Return one sentence that counts the runs left out, by reason, with the option that includes each."""
    if not leaderboard.excluded:
        return "Excluded runs: none."
    runs = {run for ids in leaderboard.excluded.values() for run in ids}
    parts = []
    for reason, ids in leaderboard.excluded.items():
        label, option = _REASONS[reason]
        parts.append(f"{len(ids)} {label}" + (f" ({option} shows them)" if option else ""))
    summary = f"Excluded {len(runs)} run(s): {'; '.join(parts)}."
    if sum(len(ids) for ids in leaderboard.excluded.values()) > len(runs):
        summary += " Some runs were excluded for more than one reason."
    return summary


# Rendering


def _header(column: Column, arrows: dict[str, str]) -> str:
    return column.title if column.direction is None else f"{column.title} {arrows[column.direction]}"


def _text(cell: dict[str, Any] | None, column: Column) -> str:
    if cell is None:
        return "–"
    value = cell["value"]
    if column.kind == "count":
        return format_count(int(value))
    if column.kind == "seconds":
        return f"{value:.0f}"
    if column.kind == "delta":
        return f"{value:+.1f}"
    if cell["half_width"] is None:
        return f"{value:.1f}"
    return f"{value:.1f} ± {cell['half_width']:.1f}"


def to_markdown(leaderboard: Leaderboard) -> str:
    headers = ["model", "method"] + [_header(c, _ARROWS) for c in leaderboard.columns]
    rows = [[row["model"], row["method"]] + [_text(row["cells"][c.key], c) for c in leaderboard.columns]
            for row in leaderboard.rows]
    lines = ["# nestbench leaderboard", ""]
    if leaderboard.source:
        lines += [f"Built by `nestbench leaderboard` from the run records in `{leaderboard.source}`.", ""]
    lines += [tabulate(rows, headers=headers, tablefmt="github") if rows else "No run records to show.", ""]
    lines += [f"- {note}" for note in leaderboard.notes]
    lines += [f"- {exclusion_summary(leaderboard)}", ""]
    return "\n".join(lines)


def to_csv(leaderboard: Leaderboard) -> str:
    """Render one CSV row per (model, method), with a value column and a ``±`` half-width column per rate."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    headers = ["model", "method", "run_id"]
    for column in leaderboard.columns:
        headers.append(_header(column, _ARROWS))
        if column.kind == "rate":
            headers.append(f"{column.title} ±")
    writer.writerow(headers)
    for row in leaderboard.rows:
        values: list[Any] = [row["model"], row["method"], row["run_id"]]
        for column in leaderboard.columns:
            cell = row["cells"][column.key]
            values.append("" if cell is None else _csv_number(cell["value"]))
            if column.kind == "rate":
                half = None if cell is None else cell["half_width"]
                values.append("" if half is None else _csv_number(half))
        writer.writerow(values)
    return buffer.getvalue()


def _csv_number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4f}"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "Δ": r"$\Delta$",
                  "±": r"$\pm$", "–": "--", "×": r"$\times$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def to_latex(leaderboard: Leaderboard) -> str:
    """Return a ``table`` with a booktabs ``tabular``; the preamble needs ``\\usepackage{booktabs}``."""
    columns = leaderboard.columns
    lines = [
        "% Built by nestbench leaderboard from run records. Needs \\usepackage{booktabs}.",
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        "\\begin{tabular}{ll" + "r" * len(columns) + "}",
        "\\toprule",
        " & ".join(["Model", "Method"] + [latex_escape(c.title) + (" " + _LATEX_ARROWS[c.direction] if c.direction else "")
                                          for c in columns]) + " \\\\",
        "\\midrule",
    ]
    previous_model = None
    for row in leaderboard.rows:
        if previous_model is not None and row["model"] != previous_model:
            lines.append("\\midrule")
        previous_model = row["model"]
        cells = [latex_escape(_text(row["cells"][c.key], c)) for c in columns]
        lines.append(" & ".join([latex_escape(row["model"]), latex_escape(row["method"])] + cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    caption = "; ".join(leaderboard.notes + [exclusion_summary(leaderboard)])
    lines += [f"\\caption{{{latex_escape(caption)}}}", "\\label{tab:nestbench}", "\\end{table}", ""]
    return "\n".join(lines)


def to_json(leaderboard: Leaderboard) -> str:
    payload = {
        "source": leaderboard.source,
        "columns": [{"key": c.key, "title": c.title, "direction": c.direction, "kind": c.kind,
                     "unit": "%" if c.kind in ("rate", "delta") else None} for c in leaderboard.columns],
        "rows": leaderboard.rows,
        "excluded": {reason: {"reason": _REASONS[reason][0], "option": _REASONS[reason][1], "run_ids": ids}
                     for reason, ids in leaderboard.excluded.items()},
        "notes": leaderboard.notes,
    }
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


_RENDERERS = {"markdown": to_markdown, "csv": to_csv, "latex": to_latex, "json": to_json}


def render(leaderboard: Leaderboard, fmt: str = "markdown") -> str:
    if fmt not in _RENDERERS:
        raise NestbenchError(f"unknown leaderboard format {fmt!r}; use one of {', '.join(FORMATS)}")
    return _RENDERERS[fmt](leaderboard)


def leaderboard_from_dir(results_dir: Path, filters: Filters = Filters(), source: str | None = None) -> Leaderboard:
    """Read every record under ``results_dir`` and build its leaderboard."""
    records = [record for _, record in find_records(results_dir)]
    logger.debug("read %d run records from %s", len(records), results_dir)
    return build_leaderboard(records, filters, source=str(results_dir) if source is None else source)
