"""Comparison tables built from hand-written run records: judge choice, agreement caption, asr_mean
and the utility change from the untouched model."""

from __future__ import annotations

from nestbench.evaluation import RateMetric
from nestbench.table import comparison_table, format_utility, record_metrics, table_caption


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


def _record(method: str, acc: float, asr_mean: float) -> dict:
    return {
        "method": method,
        "status": "success",
        "metrics": {
            "asr[dan]": {"value": asr_mean, "count": 1, "n": 2, "ci_low": 0.1, "ci_high": 0.9},
            "asr_mean": {"value": asr_mean, "attacks": 1},
            "piqa/acc": {"value": acc, "stderr": 0.01, "n": 100},
            "piqa/acc_norm": {"value": acc, "stderr": 0.01, "n": 100},
            "mmlu/acc": {"value": 0.25, "stderr": 0.01, "n": 570},
        },
    }


def test_format_utility_shows_change() -> None:
    baseline = {"value": 0.60, "stderr": 0.01, "n": 100}
    assert format_utility({"value": 0.55, "stderr": 0.01, "n": 100}, baseline).endswith("[-5.0]")


def test_format_utility_none_row_plain() -> None:
    baseline = {"value": 0.60, "stderr": 0.01, "n": 100}
    assert "[" not in format_utility(baseline, baseline)


def test_table_has_asr_mean_and_change() -> None:
    table = comparison_table([_record("none", 0.60, 0.5), _record("nest", 0.58, 0.25)])
    header, _, none_row, nest_row = table.splitlines()
    assert "ASR mean ↓" in header
    assert "piqa acc ↑" in header
    assert "mmlu acc ↑" in header
    assert "acc_norm" not in header
    assert "[" not in none_row
    assert "[-2.0]" in nest_row
    assert "[+0.0]" in nest_row
