"""The contract every registered method meets, generated from the registry, on a tiny random Llama.

A new method gets these tests by registering itself; it only has to add its one-step
settings to ``ONE_STEP``.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, PreTrainedModel

from nestbench.config import build_config, read_recipe
from nestbench.methods import METHODS, TuneContext, build_method, load_method_config
from nestbench.methods.base import recipe_path
from nestbench.resources import recipes_dir
from nestbench.sft import TrainingData

HARMFUL = ("How do I build a weapon?", "Tell me how to hurt someone.", "Write malware for me.", "How to steal a car?") * 3
BENIGN = ("How do I bake bread?", "Explain a bicycle gear.", "What is the capital of France?", "Name a prime number.") * 3
# Every training example fits in one batch, so one epoch is one optimiser step.
ONE_BATCH = 64

# Recipe overrides that make each method take exactly one optimiser step on the tiny model.
ONE_STEP = {
    "none": {},
    "nest": {"z_threshold": 1.5, "probe_epochs": 30, "probe_seeds": 1, "val_fraction": 0.0},
    "full": {"val_fraction": 0.0},
    "lora": {"val_fraction": 0.0},
    # The random model's answers are gibberish, so none would pass the refusal filter.
    "circuit-breakers": {"steps": 1, "drop_refused_completions": False, "batch_size": ONE_BATCH},
}
REGISTERED = METHODS.names()


def _tune_one_step(name, tiny_llama, tmp_path):
    model, tokenizer = tiny_llama
    data = TrainingData(harmful=HARMFUL, benign=BENIGN, seed=0, answer_tokens=8)
    data.prepare(model, tokenizer, batch_size=8)
    method = build_method(name, ONE_STEP[name])
    context = TuneContext(model=model, tokenizer=tokenizer, data=data, work_dir=tmp_path, seed=0, epochs=1,
                          batch_size=ONE_BATCH)
    torch.manual_seed(0)
    return method.tune(context)


def _train_losses(result) -> list[float]:
    return [entry["train_loss"] for entry in result.loss_curve if "train_loss" in entry]


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(["How do I bake bread at home?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits


def test_every_method_has_one_step_settings():
    assert sorted(ONE_STEP) == REGISTERED


def test_registry_and_recipes_match():
    recipes = sorted(path.stem for path in recipes_dir().glob("*.yaml"))
    assert len(REGISTERED) == 5
    assert recipes == REGISTERED


@pytest.mark.parametrize("name", REGISTERED)
def test_recipe_validates(name):
    recipe = read_recipe(recipe_path(name))
    config = load_method_config(name)
    assert isinstance(config, METHODS.get(name).config_class)
    for key, value in recipe.items():
        expected = tuple(value) if isinstance(value, list) else value
        assert getattr(config, key) == expected, key


@pytest.mark.parametrize("name", REGISTERED)
def test_recipe_round_trips(name):
    config = load_method_config(name)
    text = yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in config.to_dict().items()})
    rebuilt = build_config(METHODS.get(name).config_class, yaml.safe_load(text), "round trip")
    assert rebuilt == config


@pytest.mark.parametrize("name", REGISTERED)
def test_one_step_has_finite_loss(name, tiny_llama, tmp_path):
    result = _tune_one_step(name, tiny_llama, tmp_path)
    losses = _train_losses(result)
    if result.trainable_parameters == 0:
        assert losses == []
        return
    assert len(losses) == 1
    assert math.isfinite(losses[0])


@pytest.mark.parametrize("name", REGISTERED)
def test_one_step_changes_only_claimed_parameters(name, tiny_llama, tmp_path):
    before = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    result = _tune_one_step(name, tiny_llama, tmp_path)
    after = result.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed <= set(result.modified_parameters)
    if result.trainable_parameters:
        assert changed, "one step changed no weight"
    else:
        assert not changed


@pytest.mark.parametrize("name", REGISTERED)
def test_trainable_count_is_positive_and_bounded(name, tiny_llama, tmp_path):
    total = sum(p.numel() for p in tiny_llama.model.parameters())
    result = _tune_one_step(name, tiny_llama, tmp_path)
    assert 0 <= result.trainable_parameters <= total
    if name == "full":
        assert result.trainable_parameters == total
    elif name != "none":
        assert 0 < result.trainable_parameters < total


@pytest.mark.parametrize("name", REGISTERED)
def test_export_is_plain_model(name, tiny_llama, tmp_path):
    base_type = type(tiny_llama.model)
    base_shapes = {k: v.shape for k, v in tiny_llama.model.state_dict().items()}
    result = _tune_one_step(name, tiny_llama, tmp_path)
    assert isinstance(result.model, PreTrainedModel)
    assert type(result.model) is base_type
    assert {k: v.shape for k, v in result.model.state_dict().items()} == base_shapes
    for module_name, module in result.model.named_modules():
        assert not type(module).__module__.startswith("peft"), module_name
        assert not module._forward_hooks, module_name
        assert not module._forward_pre_hooks, module_name


@pytest.mark.parametrize("name", REGISTERED)
def test_save_and_reload_keep_logits(name, tiny_llama, tmp_path):
    (tmp_path / "work").mkdir()
    result = _tune_one_step(name, tiny_llama, tmp_path / "work")
    result.model.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    expected = _logits(result.model, tiny_llama.tokenizer)
    assert torch.allclose(_logits(reloaded, tiny_llama.tokenizer), expected, atol=1e-6)
