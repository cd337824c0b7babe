"""Evaluation settings, Wilson intervals, metric assembly, and a tiny end-to-end lm-eval run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nestbench.attacks import offline_attacks
from nestbench.errors import ConfigError, PromptSetError
from nestbench.evaluation import (
    REQUESTS_FILE,
    EvalSettings,
    EvaluationResult,
    RateMetric,
    evaluate_model,
    safety_metrics,
    utility_metrics,
    wilson_interval,
    write_requests,
)

SAFETY_METRICS = {
    "unsafe_rate",
    "refusal_rate",
    "asr[dan]",
    "asr[gcg]",
    "degenerate",
    "degenerate[vanilla]",
    "degenerate[dan]",
    "degenerate[gcg]",
}
UTILITY_METRIC_NAMES = {"arc_easy/acc", "arc_easy/acc_norm", "arc_challenge/acc", "arc_challenge/acc_norm"}
TASKS = {
    "nestbench_harmful_vanilla",
    "nestbench_harmful_dan",
    "nestbench_harmful_gcg",
    "nestbench_arc_easy",
    "nestbench_arc_challenge",
    "nestbench_over_refusal",
}
GENERATION_KEYS = {"task", "attack", "index", "request", "prompt", "response", "verdict", "reason"}
OVER_REFUSAL_METRICS = {"over_refusal", "degenerate[over_refusal]", "over_refusal[homonyms]"}


def test_wilson_interval_zero_successes() -> None:
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.2775, abs=1e-4)


def test_wilson_interval_half() -> None:
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4)
    assert high == pytest.approx(0.7634, abs=1e-4)


def test_wilson_interval_all_successes() -> None:
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(0.7225, abs=1e-4)
    assert high == 1.0


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (3, 7), (49, 50), (1, 1000)])
def test_wilson_interval_contains_rate(k: int, n: int) -> None:
    low, high = wilson_interval(k, n)
    assert low <= k / n <= high


@pytest.mark.parametrize(("k", "n"), [(0, 0), (-1, 5), (6, 5)])
def test_wilson_interval_rejects_counts(k: int, n: int) -> None:
    with pytest.raises(ValueError, match=f"k={k}, n={n}"):
        wilson_interval(k, n)


def test_rate_metric_from_counts() -> None:
    metric = RateMetric.from_counts(3, 4)
    assert metric.value == 0.75
    assert metric.count == 3
    assert metric.n == 4
    assert (metric.ci_low, metric.ci_high) == wilson_interval(3, 4)


def test_settings_defaults_match_contract() -> None:
    settings = EvalSettings()
    assert settings.attacks == offline_attacks()
    assert settings.attacks[0] == "vanilla"
    assert "wildjailbreak" not in settings.attacks
    assert settings.utility_tasks == ("arc_easy", "arc_challenge")
    assert settings.judge == "keyword"
    assert settings.utility_chat_template is False


def test_settings_round_trip_dict() -> None:
    settings = EvalSettings(attacks=("gcg",), harmful_limit=5, system_prompt="Be safe.")
    assert EvalSettings.from_dict({**settings.as_dict(), "lm_eval_version": "0.4.13"}) == settings


def test_settings_as_dict_is_json() -> None:
    values = EvalSettings(attacks=["vanilla"], harmful_limit=5).as_dict()
    assert json.loads(json.dumps(values)) == values
    assert values["attacks"] == ["vanilla"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attacks": ("vanila",)}, "vanila"),
        ({"attacks": ("gcg", "gcg")}, "duplicate"),
        ({"utility_tasks": ("mmlu_nonexistent_subject",)}, "mmlu_nonexistent_subject"),
        ({"utility_tasks": ("nestbench_arc_easy",)}, "nestbench task prefix"),
        ({"attacks": (), "utility_tasks": (), "over_refusal_set": None}, "no attack"),
        ({"over_refusal_set": "xtest"}, "'xtest'"),
        ({"over_refusal_limit": 0}, "over_refusal_limit=0"),
        ({"extra_judges": ("keyword",)}, "duplicate"),
        ({"extra_judges": ("guard",)}, "'guard'"),
        ({"judge_models": {"keyword": "x"}}, "not a model-based judge"),
        ({"judge_models": {"llama-guard-3": "x"}}, "not among the judges"),
        ({"judge_batch_size": 0}, "judge_batch_size=0"),
        ({"judge": "llm"}, "'llm'"),
        ({"max_gen_toks": 0}, "max_gen_toks=0"),
        ({"batch_size": "16"}, "batch_size='16'"),
        ({"harmful_limit": 0}, "harmful_limit=0"),
        ({"attack_limit": -2}, "attack_limit=-2"),
        ({"utility_limit": 2.5}, "utility_limit=2.5"),
    ],
)
def test_settings_reject_invalid_values(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EvalSettings(**overrides)


def test_write_requests_jsonl(tmp_path: Path) -> None:
    path = write_requests(["a", "b \"quoted\""], tmp_path / "work")
    assert path == tmp_path / "work" / REQUESTS_FILE
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["request"] for line in lines] == ["a", "b \"quoted\""]


@pytest.mark.parametrize("requests", [[], ["fine", " "]])
def test_write_requests_rejects_empty(tmp_path: Path, requests: list[str]) -> None:
    with pytest.raises(PromptSetError):
        write_requests(requests, tmp_path)


def _row(attack: str, verdict: str) -> dict:
    return {"attack": attack, "verdict": verdict}


def test_safety_metrics_counts_verdicts() -> None:
    rows = [_row("vanilla", "unsafe"), _row("vanilla", "refused"), _row("vanilla", "degenerate"), _row("dan", "unsafe")]
    metrics = safety_metrics(rows, ("vanilla", "dan"))
    assert metrics["unsafe_rate"]["count"] == 1
    assert metrics["refusal_rate"]["count"] == 1
    assert metrics["degenerate[vanilla]"]["count"] == 1
    assert metrics["asr[dan]"]["value"] == 1.0
    assert metrics["degenerate"]["n"] == 4


def test_safety_metrics_degenerate_in_denominator() -> None:
    rows = [_row("vanilla", "unsafe"), _row("vanilla", "degenerate")]
    assert safety_metrics(rows, ("vanilla",))["unsafe_rate"]["n"] == 2


def test_safety_metrics_without_vanilla() -> None:
    metrics = safety_metrics([_row("gcg", "refused")], ("gcg",))
    assert set(metrics) == {"asr[gcg]", "asr_mean", "degenerate[gcg]", "degenerate"}


def test_asr_mean_excludes_vanilla() -> None:
    rows = [_row("vanilla", "unsafe"), _row("dan", "unsafe"), _row("dan", "refused"), _row("gcg", "refused")]
    metrics = safety_metrics(rows, ("vanilla", "dan", "gcg"))
    assert metrics["asr_mean"]["value"] == pytest.approx(0.25)
    assert metrics["asr_mean"]["attacks"] == 2


def test_asr_mean_unweighted_by_count() -> None:
    rows = [_row("tap", "unsafe")] + [_row("rot13", "refused")] * 3
    assert safety_metrics(rows, ("tap", "rot13"))["asr_mean"]["value"] == pytest.approx(0.5)


def test_asr_mean_absent_for_vanilla_only() -> None:
    assert "asr_mean" not in safety_metrics([_row("vanilla", "unsafe")], ("vanilla",))


def test_utility_metrics_reads_lm_eval_keys() -> None:
    results = {
        "results": {
            "nestbench_arc_easy": {
                "acc,none": 0.5,
                "acc_stderr,none": 0.1,
                "acc_norm,none": 0.6,
                "acc_norm_stderr,none": 0.2,
            }
        },
        "n-samples": {"nestbench_arc_easy": {"original": 570, "effective": 10}},
    }
    metrics = utility_metrics(results, ("arc_easy",))
    assert metrics["arc_easy/acc"] == {"value": 0.5, "stderr": 0.1, "n": 10}
    assert metrics["arc_easy/acc_norm"] == {"value": 0.6, "stderr": 0.2, "n": 10}
    assert set(metrics) == {"arc_easy/acc", "arc_easy/acc_norm"}


def test_utility_metrics_group_counts_subtasks() -> None:
    results = {
        "results": {"nestbench_mmlu": {"alias": "mmlu", "acc,none": 0.3, "acc_stderr,none": 0.05}},
        "group_subtasks": {"nestbench_mmlu": ["nestbench_mmlu_anatomy", "nestbench_mmlu_virology"]},
        "n-samples": {
            "nestbench_mmlu_anatomy": {"original": 135, "effective": 4},
            "nestbench_mmlu_virology": {"original": 166, "effective": 3},
        },
    }
    assert utility_metrics(results, ("mmlu",)) == {"mmlu/acc": {"value": 0.3, "stderr": 0.05, "n": 7}}


def test_utility_metrics_names_filtered_metric() -> None:
    results = {
        "results": {"gsm8k": {"exact_match,strict-match": 0.1, "exact_match_stderr,strict-match": "N/A"}},
        "n-samples": {"gsm8k": {"original": 1319, "effective": 5}},
    }
    metric = utility_metrics(results, ("gsm8k",))["gsm8k/exact_match,strict-match"]
    assert metric == {"value": 0.1, "stderr": None, "n": 5}


def test_settings_accept_builtin_task() -> None:
    assert EvalSettings(utility_tasks=("arc_easy", "piqa", "lambada_openai")).utility_tasks[-1] == "lambada_openai"


@pytest.fixture
def tiny_result(tiny_llama, tmp_path: Path) -> tuple[EvaluationResult, EvalSettings, object]:
    """Run the full evaluation on a random two-layer model: 3 requests and 4 ARC items."""
    model, tokenizer = tiny_llama
    model.train()
    settings = EvalSettings(
        attacks=("vanilla", "dan", "gcg"), harmful_limit=3, utility_limit=4, max_gen_toks=4, batch_size=4,
        over_refusal_limit=3,
    )
    requests = ["Say one.", "Say two.", "Say three.", "Say four."]
    result = evaluate_model(model, tokenizer, requests, settings, tmp_path)
    return result, settings, model


def test_evaluate_tiny_model_end_to_end(tiny_result) -> None:
    result, settings, model = tiny_result

    assert set(result.metrics) == SAFETY_METRICS | {"asr_mean"} | UTILITY_METRIC_NAMES | OVER_REFUSAL_METRICS
    assert result.metrics["asr_mean"]["value"] == pytest.approx(
        (result.metrics["asr[dan]"]["value"] + result.metrics["asr[gcg]"]["value"]) / 2
    )
    for name in SAFETY_METRICS - {"degenerate"}:
        assert result.metrics[name]["n"] == 3, name
    assert result.metrics["degenerate"]["n"] == 9
    for name in UTILITY_METRIC_NAMES:
        assert result.metrics[name]["n"] == 4, name
    for name in SAFETY_METRICS:
        metric = result.metrics[name]
        assert metric["ci_low"] <= metric["value"] <= metric["ci_high"], name
        assert metric["count"] == round(metric["value"] * metric["n"]), name
    vanilla_counts = [result.metrics[name]["count"] for name in ("unsafe_rate", "refusal_rate", "degenerate[vanilla]")]
    assert sum(vanilla_counts) == 3

    harmful = result.generations[:9]
    benign = result.generations[9:]
    assert all(set(row) == GENERATION_KEYS for row in harmful)
    assert [row["index"] for row in harmful] == [0, 1, 2] * 3
    assert [row["attack"] for row in harmful] == ["vanilla"] * 3 + ["dan"] * 3 + ["gcg"] * 3
    assert all(row["verdict"] in {"unsafe", "refused", "degenerate"} for row in harmful)
    assert harmful[0]["prompt"] == "Say one."
    assert [row["attack"] for row in benign] == [None] * 3
    assert [row["type"] for row in benign] == ["homonyms"] * 3
    assert all(row["verdict"] in {"refused", "answered", "degenerate"} for row in benign)
    assert result.metrics["over_refusal"]["n"] == 3

    assert set(result.task_versions) == TASKS
    assert EvalSettings.from_dict(result.settings) == settings
    assert result.settings["judge_info"] == {"name": "keyword", "version": "2"}
    assert result.judges == [{"name": "keyword", "version": "2"}]
    assert set(result.metrics_by_judge) == {"keyword"}
    assert result.agreement == {}
    assert result.settings["lm_eval_version"]
    assert model.training is True


def test_evaluate_times_each_task(tiny_result) -> None:
    result, _, _ = tiny_result
    assert set(result.timings) == TASKS
    assert all(seconds > 0 for seconds in result.timings.values())


def test_evaluate_new_attacks_and_utility(tiny_llama, tmp_path: Path) -> None:
    """Run two garak-free attacks, one fixed-prompt attack and two new utility tasks on a random model."""
    model, tokenizer = tiny_llama
    settings = EvalSettings(
        attacks=("vanilla", "rot13", "payload_splitting", "tap"),
        utility_tasks=("winogrande", "mmlu"),
        harmful_limit=3,
        utility_limit=2,
        max_gen_toks=4,
        batch_size=4,
    )
    requests = ["Say one.", "Say two.", "Say three.", "Say four."]
    result = evaluate_model(model, tokenizer, requests, settings, tmp_path)

    for attack in ("rot13", "payload_splitting", "tap"):
        assert result.metrics[f"asr[{attack}]"]["n"] == 3, attack
    rates = [result.metrics[f"asr[{attack}]"]["value"] for attack in ("rot13", "payload_splitting", "tap")]
    assert result.metrics["asr_mean"]["value"] == pytest.approx(sum(rates) / 3)
    tap_rows = [row for row in result.generations if row["attack"] == "tap"]
    assert [row["request"] for row in tap_rows] == [row["prompt"] for row in tap_rows]
    rot13_rows = [row for row in result.generations if row["attack"] == "rot13"]
    assert [row["request"] for row in rot13_rows] == requests[:3]

    assert result.metrics["winogrande/acc"]["n"] == 2
    assert 0.0 <= result.metrics["winogrande/acc"]["value"] <= 1.0
    assert result.metrics["mmlu/acc"]["n"] == 2 * 57
    assert "nestbench_mmlu_anatomy" in result.task_versions
