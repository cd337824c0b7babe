"""Score collected harmful responses with one or more judges, after generation has finished.

Model-based judges load a second model and classify in batches, which lm-eval's per-sample
``process_results`` hook cannot do. ``evaluate_model`` therefore generates through lm-eval,
collects the responses, and passes them here. The first judge gives the run's metrics;
every judge gets its own metrics, and every pair of judges its agreement.
"""

from __future__ import annotations

import gc
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nestbench.judges import JUDGES, judge_agreement, make_judge

logger = logging.getLogger(__name__)


@dataclass
class JudgingResult:
    """Metrics per judge, each judge's description, and the agreement of every pair of judges."""

    metrics_by_judge: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    judges: list[dict[str, Any]] = field(default_factory=list)
    agreement: dict[str, dict[str, Any]] = field(default_factory=dict)


def judge_rows(
    rows: list[dict[str, Any]],
    judges: Sequence[str],
    attacks: Sequence[str],
    *,
    judge_models: dict[str, str] | None = None,
    device: str = "auto",
    batch_size: int = 8,
) -> JudgingResult:
    """Label every harmful row with each judge in turn, and compute metrics and agreement.

    Each row gets ``verdict`` and ``reason`` from the first judge, ``score`` when that judge
    grades, and ``verdicts`` (judge name to label) when more than one judge runs. A judge's
    model is loaded, used and released before the next judge loads, so only one judge
    model is in memory at a time.
    """
    from nestbench.evaluation import safety_metrics

    result = JudgingResult()
    requests = [row["request"] for row in rows]
    responses = [row["response"] for row in rows]
    labels: dict[str, list[str]] = {}
    for position, name in enumerate(judges):
        judge = make_judge(name, _judge_model(name, judge_models or {}), device=device, batch_size=batch_size)
        logger.info("judging %d responses with %s", len(rows), name)
        verdicts = judge.judge_batch(requests, responses)
        result.judges.append(judge.describe())
        del judge
        gc.collect()

        labels[name] = [verdict.label for verdict in verdicts]
        judged = [{**row, "verdict": verdict.label} for row, verdict in zip(rows, verdicts)]
        metrics = safety_metrics(judged, attacks)
        metrics.update(_extra_metrics(judged, verdicts, attacks, JUDGES.get(name).needs_model))
        result.metrics_by_judge[name] = metrics
        if position == 0:
            _write_first_verdicts(rows, verdicts)
    if len(judges) > 1:
        for index, row in enumerate(rows):
            row["verdicts"] = {name: labels[name][index] for name in judges}
        for first, second in itertools.combinations(judges, 2):
            result.agreement[f"{first}|{second}"] = judge_agreement(labels[first], labels[second])
    return result


def _judge_model(name: str, judge_models: dict[str, str]) -> str | None:
    # A combined judge such as "llama-guard-3+refusal" also takes the model given for its guard.
    if name in judge_models:
        return judge_models[name]
    guard = name.split("+", 1)[0]
    return judge_models.get(guard)


def _write_first_verdicts(rows: list[dict[str, Any]], verdicts: Sequence[Any]) -> None:
    for row, verdict in zip(rows, verdicts):
        row["verdict"] = verdict.label
        row["reason"] = verdict.reason
        if verdict.score is not None:
            row["score"] = verdict.score


def _extra_metrics(
    rows: list[dict[str, Any]], verdicts: Sequence[Any], attacks: Sequence[str], model_based: bool
) -> dict[str, dict[str, Any]]:
    """Return ``unparsed`` rates for a model-based judge and mean ``judge_score`` for a grading one."""
    from nestbench.evaluation import _rate

    metrics: dict[str, dict[str, Any]] = {}
    if model_based:
        for attack in attacks:
            metrics[f"unparsed[{attack}]"] = _rate([row for row in rows if row["attack"] == attack], "unparsed")
        metrics["unparsed"] = _rate(rows, "unparsed")
    scored = [(row["attack"], verdict.score) for row, verdict in zip(rows, verdicts) if verdict.score is not None]
    for attack in attacks:
        values = [score for name, score in scored if name == attack]
        if values:
            metrics[f"judge_score[{attack}]"] = _mean_metric(values)
    return metrics


def _mean_metric(values: Sequence[float]) -> dict[str, Any]:
    n = len(values)
    mean = sum(values) / n
    variance = sum((value - mean) ** 2 for value in values) / (n - 1) if n > 1 else 0.0
    return {"value": mean, "stderr": (variance / n) ** 0.5, "n": n}
