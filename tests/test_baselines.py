"""Baseline mechanics on a tiny random Llama: LoRA adapter artifact, circuit-breaker losses and layers."""

from __future__ import annotations

import json
import os

import pytest
import torch
from peft import LoraConfig, PeftModel

from conftest import build_tiny_llama
from nestbench.errors import ConfigError
from nestbench.methods import TuneContext, build_method
from nestbench.methods.adapters import attach_lora
from nestbench.methods.circuit_breakers import (
    HiddenStateRecorder,
    find_decoder_layers,
    read_completions_file,
    rerouting_loss,
    select_harmful_pairs,
    template_prefix_length,
    resolve_target_layers,
    retain_loss,
    schedule,
)
from nestbench.runner import expand_methods, peak_memory_mb, reset_peak_memory
from nestbench.sft import TrainingData

HARMFUL = ("How do I build a weapon?", "Tell me how to hurt someone.", "Write malware for me.", "How to steal a car?")
BENIGN = ("How do I bake bread?", "Explain a bicycle gear.", "What is the capital of France?", "Name a prime number.")


def _context(tiny_llama, tmp_path, epochs: int = 1) -> TuneContext:
    model, tokenizer = tiny_llama
    data = TrainingData(harmful=HARMFUL, benign=BENIGN, seed=0, answer_tokens=8)
    data.prepare(model, tokenizer, batch_size=8)
    return TuneContext(model=model, tokenizer=tokenizer, data=data, work_dir=tmp_path, seed=0, epochs=epochs,
                       batch_size=4)


def _batch(tokenizer, texts):
    tokenizer.padding_side = "right"
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def test_lora_adapter_reloads_to_merged_model(tiny_llama, tmp_path):
    context = _context(tiny_llama, tmp_path)
    result = build_method("lora", {"lr": 1e-2, "val_fraction": 0.0}).tune(context)
    ids = tiny_llama.tokenizer(["How do I bake bread?"], return_tensors="pt")["input_ids"]
    fresh = build_tiny_llama().model
    with torch.no_grad():
        base_logits = fresh(ids).logits
        adapted = PeftModel.from_pretrained(fresh, result.artifacts["adapter"])
        adapter_logits = adapted(ids).logits
        merged_logits = result.model(ids).logits
    assert (adapter_logits - base_logits).abs().max().item() > 1e-4
    assert torch.allclose(adapter_logits, merged_logits, atol=1e-5)


def test_lora_rank_one_on_ffn_counts(tiny_llama, tmp_path):
    config = tiny_llama.model.config
    result = build_method("lora", {"rank": 1, "val_fraction": 0.0}).tune(_context(tiny_llama, tmp_path))
    per_layer = 2 * (config.hidden_size + config.intermediate_size) + (config.intermediate_size + config.hidden_size)
    assert result.trainable_parameters == config.num_hidden_layers * per_layer


def test_lora_unknown_target_module(tiny_llama, tmp_path):
    method = build_method("lora", {"target_modules": ["c_fc"]})
    with pytest.raises(ConfigError, match="c_fc.*gate_proj"):
        method.tune(_context(tiny_llama, tmp_path))


def test_failed_lora_leaves_base_model(tiny_llama, tmp_path):
    names = [name for name, _ in tiny_llama.model.named_parameters()]
    method = build_method("lora", {"lr": 1e30, "val_fraction": 0.0, "grad_clip": None})
    context = _context(tiny_llama, tmp_path, epochs=20)
    with pytest.raises(Exception):
        method.tune(context)
    assert [name for name, _ in tiny_llama.model.named_parameters()] == names
    assert all(p.requires_grad for p in tiny_llama.model.parameters())


def test_schedule_over_any_step_count():
    assert schedule(0, 150, 10.0) == (10.0, 0.0)
    assert schedule(150, 150, 10.0) == (5.0, 5.0)
    c_s, c_r = schedule(450, 450, 2.0)
    assert (c_s, c_r) == (1.0, 1.0)
    assert schedule(75, 150, 10.0) == (7.5, 2.5)


def test_rerouting_loss_values():
    frozen = [torch.tensor([[[1.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])]
    mask = torch.tensor([[1, 1, 0]])
    same = rerouting_loss(frozen, frozen, mask)
    orthogonal = rerouting_loss([torch.tensor([[[0.0, 1.0], [0.0, 2.0], [5.0, 5.0]]])], frozen, mask)
    opposite = rerouting_loss([torch.tensor([[[-1.0, 0.0], [-3.0, 0.0], [5.0, 5.0]]])], frozen, mask)
    assert same.item() == pytest.approx(1.0)
    assert orthogonal.item() == pytest.approx(0.0)
    assert opposite.item() == pytest.approx(0.0)  # the ReLU gives no reward past orthogonal


def test_retain_loss_values():
    frozen = [torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)]
    lora = [torch.tensor([[[3.0, 4.0], [0.0, 0.0], [9.0, 9.0]]]), torch.zeros(1, 3, 2)]
    mask = torch.tensor([[1, 1, 0]])
    # Layer 0: distances 5 and 0 over two unmasked tokens; layer 1: 0. Mean of 2.5 and 0.
    assert retain_loss(lora, frozen, mask).item() == pytest.approx(1.25)


@pytest.mark.parametrize(("layers", "expected"), [(32, (10, 20)), (30, (9, 19)), (2, (1,)), (1, (1,))])
def test_target_layers_scale_with_depth(layers, expected):
    assert resolve_target_layers((), layers) == expected


def test_target_layers_too_deep():
    with pytest.raises(ConfigError, match=r"target_layers \[40\] exceed the model's 30 layers"):
        resolve_target_layers((10, 40), 30)


def test_recorder_matches_hidden_states_and_stops_early(tiny_llama):
    model, tokenizer = tiny_llama
    batch = _batch(tokenizer, ["How do I bake bread?", "Explain a bicycle gear to me please."])
    layers = find_decoder_layers(model)
    calls = []
    handle = layers[1].register_forward_hook(lambda *_: calls.append(1))
    states = HiddenStateRecorder(model.get_input_embeddings(), layers, 1)(model, batch)
    handle.remove()
    with torch.no_grad():
        reference = model(**batch, output_hidden_states=True).hidden_states
    assert calls == []
    assert len(states) == 2
    assert torch.allclose(states[0], reference[0])
    assert torch.allclose(states[1], reference[1])


def test_disabled_adapter_gives_frozen_states(tiny_llama):
    model, tokenizer = tiny_llama
    batch = _batch(tokenizer, ["How do I bake bread?"])
    layers = find_decoder_layers(model)
    recorder = HiddenStateRecorder(model.get_input_embeddings(), layers, 2)
    with torch.no_grad():
        base = recorder(model, batch)
    peft_model = attach_lora(model, LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_()
        adapted = recorder(peft_model, batch)
        with peft_model.disable_adapter():
            frozen = recorder(peft_model, batch)
    assert not torch.allclose(adapted[2], base[2])
    for got, expected in zip(frozen, base):
        assert torch.allclose(got, expected)


def test_circuit_breakers_lower_rerouting_loss(tiny_llama, tmp_path):
    context = _context(tiny_llama, tmp_path)
    method = build_method("circuit-breakers", {"steps": 30, "lr": 1e-2, "drop_refused_completions": False})
    result = method.tune(context)
    curve = result.loss_curve
    assert [entry["step"] for entry in curve] == list(range(1, 31))
    assert curve[0]["rerouting_loss"] == pytest.approx(1.0, abs=1e-3)  # the adapter starts as a no-op
    assert curve[-1]["rerouting_loss"] < 0.5
    assert curve[-1]["c_s"] == pytest.approx(5.0)
    assert result.report["target_layers"] == [1]


def test_circuit_breakers_read_completions_file(tiny_llama, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "How to steal a car?", "completion": "First, find an unlocked car."}) + "\n")
    context = _context(tiny_llama, tmp_path)
    result = build_method("circuit-breakers", {"steps": 2, "harmful_completions": str(path)}).tune(context)
    assert result.report["harmful_pairs"] == 1
    assert result.report["harmful_pair_source"] == str(path)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "has no pairs"),
        ("not json\n", "line 1 is not valid JSON"),
        ('{"prompt": "x"}\n', 'line 1 needs non-empty string fields "prompt" and "completion"'),
    ],
)
def test_completions_file_errors(tmp_path, content, fragment):
    path = tmp_path / "pairs.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=fragment):
        read_completions_file(path)


def test_completions_file_missing(tmp_path):
    with pytest.raises(ConfigError, match="harmful completions file not found"):
        read_completions_file(tmp_path / "missing.jsonl")


def test_harmful_pairs_keep_only_unsafe_answers():
    prompts = ["a?", "b?", "c?", "d?"]
    answers = ["Sure, first you take the wire and connect it.", "I'm sorry, but I can't help with that.",
               "", "go go go go go go go go go go go go go go go go"]
    assert select_harmful_pairs(prompts, answers, drop_refused=True) == [("a?", answers[0])]
    assert len(select_harmful_pairs(prompts, answers, drop_refused=False)) == 3


def test_all_refused_answers_raise():
    with pytest.raises(ConfigError, match="no harmful completion to reroute.*drop_refused_completions=false"):
        select_harmful_pairs(["a?"], ["I'm sorry, but I cannot assist with that."], drop_refused=True)


def test_template_prefix_covers_role_header(tiny_llama):
    tokenizer = tiny_llama.tokenizer
    header = tokenizer("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
    assert template_prefix_length(tokenizer) == len(header)


def test_expand_all_methods():
    assert expand_methods(("all",)) == ("circuit-breakers", "full", "lora", "nest")
    assert expand_methods(("nest", "all")) == ("nest", "circuit-breakers", "full", "lora")
    assert expand_methods(("lora", "lora")) == ("lora",)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_window_resets():
    cpu = torch.device("cpu")
    block = torch.ones(50_000_000)  # 200 MB
    with_block = peak_memory_mb(cpu)
    del block
    reset_peak_memory(cpu)
    assert peak_memory_mb(cpu) < with_block - 150


def test_full_with_gradient_checkpointing(tiny_llama, tmp_path):
    method = build_method("full", {"gradient_checkpointing": True, "val_fraction": 0.0, "lr": 1e-3})
    before = tiny_llama.model.model.layers[0].mlp.down_proj.weight.detach().clone()
    result = method.tune(_context(tiny_llama, tmp_path))
    assert not result.model.is_gradient_checkpointing
    assert not torch.equal(result.model.model.layers[0].mlp.down_proj.weight, before)
