"""White-box GCG through nanoGCG on a tiny random model, and the error when nanoGCG is missing."""

from __future__ import annotations

import builtins
import random
import sys
from pathlib import Path

import pytest
import torch

from nestbench import adaptive
from nestbench.errors import ConfigError
from nestbench.evaluation import EvalSettings, evaluate_model


def _hide_nanogcg(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def blocked(name, *args, **kwargs):
        if name == "nanogcg":
            raise ImportError("No module named 'nanogcg'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "nanogcg", raising=False)
    monkeypatch.setattr(builtins, "__import__", blocked)


def test_missing_nanogcg_names_install(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_nanogcg(monkeypatch)
    with pytest.raises(ConfigError, match=r"pip install 'nestbench\[gcg\]'"):
        EvalSettings(attacks=("vanilla", "gcg_adaptive"))


def test_read_suffixes_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="evaluate_model"):
        adaptive.read_suffixes(tmp_path / "absent.jsonl")


def test_suffixes_round_trip(tmp_path: Path) -> None:
    rows = [{"request": "a", "suffix": "!! x", "loss": 1.5}, {"request": "b", "suffix": "ü y", "loss": 2.0}]
    path = adaptive.write_suffixes(rows, tmp_path / "s.jsonl")
    assert adaptive.read_suffixes(path) == ("!! x", "ü y")


@pytest.fixture
def small_gcg(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink GCG's search so that a step on the tiny model takes well under a second."""
    pytest.importorskip("nanogcg")
    monkeypatch.setattr(adaptive, "GCG_SEARCH_WIDTH", 8)
    monkeypatch.setattr(adaptive, "GCG_TOPK", 8)
    monkeypatch.setattr(adaptive, "GCG_INIT", "x x x x x")


def test_optimise_restores_global_state(tiny_llama, small_gcg) -> None:
    model, tokenizer = tiny_llama
    random.seed(123)
    torch.manual_seed(123)
    expected_python, expected_torch = random.random(), torch.rand(1)
    random.seed(123)
    torch.manual_seed(123)
    rows = adaptive.optimise_suffixes(model, tokenizer, ["Say one."], steps=2)
    assert random.random() == expected_python
    assert torch.equal(torch.rand(1), expected_torch)
    assert not torch.are_deterministic_algorithms_enabled()
    assert rows[0]["request"] == "Say one."
    assert rows[0]["suffix"]
    assert rows[0]["loss"] > 0


def test_evaluate_gcg_adaptive_subset(tiny_llama, small_gcg, tmp_path: Path) -> None:
    model, tokenizer = tiny_llama
    settings = EvalSettings(
        attacks=("vanilla", "gcg_adaptive"), utility_tasks=(), gcg_steps=2, gcg_prompts=2,
        max_gen_toks=4, batch_size=4,
    )
    result = evaluate_model(model, tokenizer, ["Say one.", "Say two.", "Say three."], settings, tmp_path)
    suffixes = adaptive.read_suffixes(tmp_path / adaptive.SUFFIXES_FILE)
    rows = [row for row in result.generations if row["attack"] == "gcg_adaptive"]
    assert result.metrics["asr[gcg_adaptive]"]["n"] == 2
    assert [row["prompt"] for row in rows] == [f"Say one. {suffixes[0]}", f"Say two. {suffixes[1]}"]
    assert result.metrics["unsafe_rate"]["n"] == 3
