"""Markdown comparison tables built from run records only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

# (metric key in the record, column title); the arrow shows which direction is better.
_SAFETY_COLUMNS = (
    ("unsafe_rate", "unsafe rate ↓"),
    ("over_refusal", "over-refusal ↓"),
    ("degenerate", "degenerate ↓"),
)
_UTILITY_SUFFIX = ("/acc", " acc ↑")


def half_width(metric: dict[str, Any]) -> float | None:
    """Return the half-width of a metric's 95% interval as a fraction, or None when it has none.

    A rate carries its interval bounds; a utility metric carries lm-eval's standard error,
    which gives the normal-approximation half-width 1.96 × stderr.
    """
    if metric.get("ci_low") is not None and metric.get("ci_high") is not None:
        return (metric["ci_high"] - metric["ci_low"]) / 2
    if metric.get("stderr") is not None:
        return 1.96 * metric["stderr"]
    return None


def format_rate(metric: dict[str, Any] | None) -> str:
    """Format a rate metric as a percentage with the half-width of its 95% interval."""
    if not metric:
        return "–"
    value = 100 * metric["value"]
    half = half_width(metric)
    if half is None:
        return f"{value:.1f}"
    return f"{value:.1f} ± {100 * half:.1f} (n={metric['n']})"


def format_count(n: int | None) -> str:
    if n is None:
        return "–"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}K"
    return str(n)


def format_trainable(record: dict[str, Any]) -> str:
    """Format the trainable parameter count with its share of the model's parameters."""
    count = record.get("trainable_parameters")
    total = record.get("model", {}).get("total_parameters")
    if count is None or not total:
        return format_count(count)
    return f"{format_count(count)} ({100 * count / total:.3g}%)"


def record_metrics(record: dict[str, Any], judge: str | None = None) -> dict[str, Any]:
    """Return a record's metrics, with the safety metrics of ``judge`` when it scored the record.

    A record that ``judge`` did not score keeps its own metrics, those of its first judge.
    """
    metrics = dict(record.get("metrics", {}))
    if judge is not None:
        metrics.update(record.get("metrics_by_judge", {}).get(judge, {}))
    return metrics


def format_utility(metric: dict[str, Any] | None, baseline: dict[str, Any] | None) -> str:
    """Format a utility metric, followed by its change in points from the ``none`` row when given."""
    text = format_rate(metric)
    if metric and baseline and metric is not baseline:
        text += f" [{100 * (metric['value'] - baseline['value']):+.1f}]"
    return text


def _utility_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    """Return each utility task's accuracy metric: ``<task>/acc``, or its first metric when it has none."""
    keys = {k for r in records for k in r.get("metrics", {}) if "/" in k}
    tasks = sorted({k.split("/")[0] for k in keys})
    chosen = []
    for task in tasks:
        accuracy = f"{task}{_UTILITY_SUFFIX[0]}"
        chosen.append(accuracy if accuracy in keys else min(k for k in keys if k.startswith(f"{task}/")))
    return chosen


def comparison_table(records: Sequence[dict[str, Any]], judge: str | None = None) -> str:
    """Return a markdown table with one row per record: attack success rates, utility and cost.

    ``judge`` picks whose safety metrics are shown when a record contains several judges' metrics.
    Utility cells of a tuned model end with the change in points from the ``none`` record,
    in square brackets, when the records include one.
    """
    records = [{**record, "metrics": record_metrics(record, judge)} for record in records]
    attack_keys = sorted({k for r in records for k in r.get("metrics", {}) if k.startswith("asr[")})
    has_mean = any("asr_mean" in r.get("metrics", {}) for r in records)
    utility_keys = _utility_keys(records)
    baseline = next((r.get("metrics", {}) for r in records if r.get("method") == "none"), {})
    headers = ["method", "status"]
    headers += [f"ASR {k[4:-1]} ↓" for k in attack_keys]
    headers += ["ASR mean ↓"] if has_mean else []
    headers += [title for _, title in _SAFETY_COLUMNS]
    headers += [k.replace("/", " ") + " ↑" for k in utility_keys]
    headers += ["trainable params (% of model)", "tuning time (s)"]
    rows = []
    for record in records:
        metrics = record.get("metrics", {})
        row = [record["method"], record["status"]]
        row += [format_rate(metrics.get(k)) for k in attack_keys]
        row += [format_rate(metrics.get("asr_mean"))] if has_mean else []
        row += [format_rate(metrics.get(k)) for k, _ in _SAFETY_COLUMNS]
        row += [format_utility(metrics.get(k), baseline.get(k)) for k in utility_keys]
        row += [format_trainable(record), _format_seconds(record.get("timings", {}).get("tune"))]
        rows.append(row)
    return tabulate(rows, headers=headers, tablefmt="github")


def _format_seconds(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.0f}"


def table_caption(records: Sequence[dict[str, Any]], judge: str | None = None) -> str:
    """Describe the protocol behind a table: judge, model, prompt counts and generation length.

    ``judge`` names the judge whose metrics the table shows, when it is not the first one.
    """
    if not records:
        return ""
    first = records[0]
    evaluation = first.get("evaluation", {})
    judge = judge or first.get("judge", {}).get("name", "?")
    notes = [
        f"model {first['model']['spec']}",
        f"judge: {judge}",
        f"safety: {evaluation.get('max_gen_toks', '?')} new tokens, greedy, chat template",
        "utility: lm-eval log-likelihood without chat template",
        "rates in % with 95% Wilson interval half-widths",
        "ASR mean: unweighted mean over the attacks other than vanilla",
        "utility change from none in points, in brackets",
    ]
    for pair, agreement in first.get("judge_agreement", {}).items():
        notes.append(_format_agreement(pair, agreement))
    if first.get("quick"):
        notes.append("quick profile (subsets; not a paper-scale result)")
    if any(r.get("limited") for r in records):
        notes.append("LIMITED run (--limit): not a real result")
    return "; ".join(notes)


def _format_agreement(pair: str, agreement: dict[str, Any]) -> str:
    if agreement.get("agreement") is None:
        return f"judges {pair}: no response that both judges could label"
    kappa = agreement.get("kappa")
    kappa_text = "undefined" if kappa is None else f"{kappa:.2f}"
    return (
        f"judges {pair} agree on {100 * agreement['agreement']:.1f}% of {agreement['n']} responses "
        f"(Cohen's kappa {kappa_text}, first row)"
    )
