"""Figures drawn from run records with matplotlib, written as PNG and SVG.

- ``asr_by_attack``: attack success rate per attack (vanilla is ``unsafe_rate``), one bar
  per method, with 95% interval error bars, one panel per model.
- ``safety_vs_utility``: mean utility accuracy against mean attack success rate, marker
  area growing with the number of trainable parameters, and the Pareto front dashed (up and
  left is better).
- ``safety_neurons_<run_id>``: safety neurons per layer and projection from a NeST run's
  audit report (``nest_audit.json`` in the run folder).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nestbench.errors import NestbenchError
from nestbench.leaderboard import Filters, find_records, model_name, select_records
from nestbench.table import half_width

logger = logging.getLogger(__name__)

IMAGE_FORMATS = ("png", "svg", "pdf")
AUDIT_NAME = "nest_audit.json"
_LAYER = re.compile(r"layers\.(\d+)\.")


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise NestbenchError("nestbench plot needs matplotlib; install it with: pip install 'nestbench[plot]'") from err
    matplotlib.use("Agg")
    # A fixed hash salt and no date make SVG files byte-identical across runs.
    matplotlib.rcParams["svg.hashsalt"] = "nestbench"
    import matplotlib.pyplot as plt

    return plt


def _save(figure, out_dir: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    paths = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        metadata = {"Date": None} if fmt in ("svg", "pdf") else {}
        figure.savefig(path, bbox_inches="tight", dpi=150, metadata=metadata)
        paths.append(path)
    return paths


def _attack_metrics(records: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """Return (metric key, attack label) pairs: vanilla first, then each attack by name."""
    keys = {key for record in records for key in record.get("metrics", {})}
    pairs = [("unsafe_rate", "vanilla")] if "unsafe_rate" in keys else []
    pairs += [(key, key[4:-1]) for key in sorted(k for k in keys if k.startswith("asr["))]
    return pairs


def method_colours(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Map each method to a colour of matplotlib's default cycle, the same in every figure drawn from ``records``."""
    methods = sorted({record["method"] for record in records}, key=lambda method: (method != "none", method))
    return {method: f"C{index % 10}" for index, method in enumerate(methods)}


def marker_areas(parameter_counts: Sequence[int]) -> list[float]:
    """Return scatter marker areas that grow with log10(trainable parameters + 1) across the given runs.

    The smallest count gets 40 points² and the largest 400, so counts that differ by orders of
    magnitude stay apart, and zero parameters (``none``) still draws a visible marker.
    """
    logs = [math.log10(count + 1) for count in parameter_counts]
    low, high = min(logs, default=0.0), max(logs, default=0.0)
    if high == low:
        return [120.0 for _ in logs]
    return [40.0 + 360.0 * (value - low) / (high - low) for value in logs]


def asr_by_attack(records: Sequence[dict[str, Any]], out_dir: Path, formats: Sequence[str]) -> list[Path]:
    plt = _pyplot()
    attacks = _attack_metrics(records)
    colours = method_colours(records)
    models = sorted({model_name(r) for r in records})
    figure, axes = plt.subplots(len(models), 1, figsize=(max(5.0, 1.6 * len(attacks) + 2), 3.2 * len(models)),
                                squeeze=False)
    for axis, model in zip(axes[:, 0], models):
        rows = sorted((r for r in records if model_name(r) == model), key=lambda r: (r["method"] != "none", r["method"]))
        width = 0.8 / max(1, len(rows))
        for index, record in enumerate(rows):
            metrics = record.get("metrics", {})
            values = [100 * metrics[key]["value"] if key in metrics else math.nan for key, _ in attacks]
            errors = [100 * (half_width(metrics[key]) or 0.0) if key in metrics else 0.0 for key, _ in attacks]
            positions = [i + (index - (len(rows) - 1) / 2) * width for i in range(len(attacks))]
            axis.bar(positions, values, width, yerr=errors, capsize=3, label=record["method"],
                     color=colours[record["method"]])
        axis.set_xticks(range(len(attacks)), [label for _, label in attacks])
        axis.set_ylim(0, 105)
        axis.set_ylabel("attack success rate (%) ↓")
        axis.set_title(model)
        # Outside the axes, so the legend never hides a bar or its error bar.
        axis.legend(title="method", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    paths = _save(figure, out_dir, "asr_by_attack", formats)
    plt.close(figure)
    return paths


def _mean_value(record: dict[str, Any], keys: Sequence[str]) -> float | None:
    values = [record["metrics"][key]["value"] for key in keys if key in record.get("metrics", {})]
    return 100 * sum(values) / len(values) if values else None


def safety_vs_utility(records: Sequence[dict[str, Any]], out_dir: Path, formats: Sequence[str]) -> list[Path]:
    plt = _pyplot()
    attack_keys = [key for key, _ in _attack_metrics(records)]
    utility_keys = sorted({k for r in records for k in r.get("metrics", {}) if k.endswith("/acc")})
    figure, axis = plt.subplots(figsize=(6, 4.5))
    colours = method_colours(records)
    placed = []
    for record in sorted(records, key=lambda r: (model_name(r), r["method"])):
        asr = _mean_value(record, attack_keys)
        utility = _mean_value(record, utility_keys)
        if asr is not None and utility is not None:
            placed.append((record, asr, utility))
    areas = marker_areas([record.get("trainable_parameters") or 0 for record, _, _ in placed])
    for (record, asr, utility), area in zip(placed, areas):
        axis.scatter(asr, utility, s=area, alpha=0.7, color=colours[record["method"]])
    points = [(asr, utility) for _, asr, utility in placed]
    for (asr, utility), label in point_labels(placed).items():
        axis.annotate(label, (asr, utility), textcoords="offset points", xytext=(6, 4), fontsize="small")
    # Room on every side for the labels of the outermost points.
    axis.margins(x=0.25, y=0.12)
    front = pareto_front(points)
    if len(front) > 1:
        axis.plot(*zip(*front), linestyle="--", color="grey", linewidth=1, label="Pareto front")
        axis.legend(fontsize="small")
    if attack_keys == ["unsafe_rate"]:
        axis.set_xlabel("unsafe rate on vanilla prompts (%) ↓")
    else:
        axis.set_xlabel(f"mean attack success rate over {len(attack_keys)} attacks, vanilla included (%) ↓")
    axis.set_ylabel(f"mean utility accuracy (%) ↑ ({', '.join(k.split('/')[0] for k in utility_keys)})")
    axis.set_title("safety against utility (marker size: trainable parameters)")
    figure.tight_layout()
    paths = _save(figure, out_dir, "safety_vs_utility", formats)
    plt.close(figure)
    return paths


def point_labels(placed: Sequence[tuple[dict[str, Any], float, float]]) -> dict[tuple[float, float], str]:
    """Return one label per plotted point from ``(record, asr, utility)`` triples.

    Runs that land on the same point to 0.1 (e.g. ``none`` and a method that changed nothing)
    share one label, so their names do not print on top of each other. The model name is
    left out when every run is of the same model.
    """
    one_model = len({model_name(record) for record, _, _ in placed}) == 1
    names: dict[tuple[float, float], list[str]] = {}
    for record, asr, utility in placed:
        name = record["method"] if one_model else f"{model_name(record).rsplit('/', 1)[-1]} {record['method']}"
        names.setdefault((round(asr, 1), round(utility, 1)), []).append(name)
    return {point: ", ".join(group) for point, group in names.items()}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Return the (ASR, utility) points that no other point beats on both, sorted by ASR.

    A point is beaten when another has lower or equal ASR and higher or equal utility, and is
    better on at least one of them.
    """
    front = []
    for point in points:
        beaten = any(o[0] <= point[0] and o[1] >= point[1] and o != point for o in points)
        if not beaten and point not in front:
            front.append(point)
    return sorted(front)


def neurons_per_layer(audit: dict[str, Any]) -> dict[str, dict[int, int]]:
    """Return safety neuron counts as {projection: {layer: count}} from a NeST audit report."""
    counts: dict[str, dict[int, int]] = {}
    for module in audit.get("modules", []):
        match = _LAYER.search(module["module"])
        if match is None:
            raise NestbenchError(f"audit module name {module['module']!r} has no 'layers.<index>.' part")
        projection = module["module"].rsplit(".", 1)[-1]
        layer = int(match.group(1))
        counts.setdefault(projection, {})
        counts[projection][layer] = counts[projection].get(layer, 0) + int(module["safety_neurons"])
    return counts


def safety_neurons_plot(audit: dict[str, Any], run_id: str, out_dir: Path, formats: Sequence[str]) -> list[Path]:
    plt = _pyplot()
    counts = neurons_per_layer(audit)
    layers = sorted({layer for per_layer in counts.values() for layer in per_layer})
    figure, axis = plt.subplots(figsize=(max(5.0, 0.3 * len(layers) + 2), 3.5))
    bottom = [0] * len(layers)
    for projection in sorted(counts):
        heights = [counts[projection].get(layer, 0) for layer in layers]
        axis.bar(layers, heights, bottom=bottom, label=projection)
        bottom = [b + h for b, h in zip(bottom, heights)]
    axis.set_xticks(layers)
    axis.set_xlabel("layer")
    axis.set_ylabel("safety neurons")
    axis.yaxis.get_major_locator().set_params(integer=True)
    axis.set_title(f"NeST safety neurons per layer ({run_id})")
    axis.legend(fontsize="small")
    figure.tight_layout()
    paths = _save(figure, out_dir, f"safety_neurons_{run_id}", formats)
    plt.close(figure)
    return paths


def _audit_path(folder: Path, record: dict[str, Any]) -> Path | None:
    for candidate in (folder / AUDIT_NAME, Path(record.get("artifacts", {}).get("audit", ""))):
        if candidate.name == AUDIT_NAME and candidate.is_file():
            return candidate
    return None


def write_plots(results_dir: Path, out_dir: Path, filters: Filters = Filters(),
                formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Draw every figure for the records under ``results_dir`` that the leaderboard would show."""
    unknown = [fmt for fmt in formats if fmt not in IMAGE_FORMATS]
    if unknown or not formats:
        raise NestbenchError(f"image formats {list(formats)} are invalid; use some of {', '.join(IMAGE_FORMATS)}")
    found = find_records(results_dir)
    folders = {id(record): folder for folder, record in found}
    records, excluded = select_records([record for _, record in found], filters)
    if not records:
        reasons = ", ".join(f"{len(ids)} {reason}" for reason, ids in excluded.items()) or "no records"
        raise NestbenchError(f"no run records to plot under {results_dir} (excluded: {reasons}); "
                             "pass --include-quick, --include-limited, --include-failed or --include-dirty")
    paths = asr_by_attack(records, out_dir, formats)
    paths += safety_vs_utility(records, out_dir, formats)
    for record in records:
        if record["method"] != "nest":
            continue
        audit_path = _audit_path(folders[id(record)], record)
        if audit_path is None:
            logger.warning("run %s has no %s, so its safety neuron plot is skipped", record.get("run_id"), AUDIT_NAME)
            continue
        audit = json.loads(audit_path.read_text(encoding="utf-8"))
        paths += safety_neurons_plot(audit, record["run_id"], out_dir, formats)
    return paths
