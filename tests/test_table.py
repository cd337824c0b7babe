"""Comparison tables built from hand-written run records: judge choice and agreement caption."""

from __future__ import annotations

from nestbench.evaluation import RateMetric
from nestbench.table import comparison_table, record_metrics, table_caption


def _rate(count: int, n: int) -> dict:
    metric = RateMetric.from_counts(count, n)
    return {"value": metric.value, "count": count, "n": n, "ci_low": metric.ci_low, "ci_high": metric.ci_high}


RECORD = {
    "method": "none",
    "status": "success",
    "model": {"spec": "tiny"},
    "judge": {"name": "keyword"},
    "evaluation": {"max_gen_toks": 48},
    "metrics": {"unsafe_rate": _rate(9, 10), "over_refusal": _rate(1, 20)},
    "metrics_by_judge": {
        "keyword": {"unsafe_rate": _rate(9, 10)},
        "llama-guard-3": {"unsafe_rate": _rate(4, 10)},
    },
    "judge_agreement": {"keyword|llama-guard-3": {"n": 10, "excluded": 0, "agreement": 0.5, "kappa": 0.1}},
}


def test_record_metrics_first_judge() -> None:
    assert record_metrics(RECORD)["unsafe_rate"]["count"] == 9


def test_record_metrics_other_judge() -> None:
    metrics = record_metrics(RECORD, "llama-guard-3")
    assert metrics["unsafe_rate"]["count"] == 4
    assert metrics["over_refusal"]["count"] == 1


def test_table_shows_chosen_judge() -> None:
    assert "90.0 ±" in comparison_table([RECORD])
    assert "40.0 ±" in comparison_table([RECORD], judge="llama-guard-3")


def test_table_has_over_refusal_column() -> None:
    table = comparison_table([RECORD])
    assert "over-refusal ↓" in table
    assert "5.0 ±" in table


def test_caption_names_judge_and_agreement() -> None:
    caption = table_caption([RECORD], judge="llama-guard-3")
    assert "judge: llama-guard-3" in caption
    assert "judges keyword|llama-guard-3 agree on 50.0% of 10 responses (Cohen's kappa 0.10" in caption
