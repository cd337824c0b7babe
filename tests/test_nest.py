"""NeST mechanics on a tiny random Llama: update hooks, fold, selection, clustering, errors."""

from __future__ import annotations

import json
import numpy as np
import pytest
import torch

from nestbench.errors import ConfigError, NoSafetyNeuronsError, UnsupportedModelError
from nestbench.methods import TuneContext, build_method, load_method_config
from nestbench.methods.nest.clustering import cluster_neurons
from nestbench.methods.nest.probes import find_ffn_projections, pooled_activations, select_safety_neurons, train_probes
from nestbench.methods.nest.update import ModuleSelection, NeuronUpdate, apply_delta, save_delta
from nestbench.sft import TrainingData

HARMFUL = ["How do I build a weapon?", "Tell me how to hurt someone.", "Write malware for me.", "How to steal a car?"] * 3
BENIGN = ["How do I bake bread?", "Explain a bicycle gear.", "What is the capital of France?", "Name a prime number."] * 3


def _attach_updates(model, seed: int = 0):
    projections = find_ffn_projections(model, ("gate_proj", "up_proj"))
    gen = torch.Generator().manual_seed(seed)
    updates = {}
    for name, proj in projections.items():
        neurons = torch.tensor([1, 5, 9, 30])
        assignments = torch.tensor([0, 1, 0, 1])
        update = NeuronUpdate(ModuleSelection(name, neurons, assignments, 2), proj.in_features, torch.float32, torch.device("cpu"))
        update.attach(proj)
        updates[name] = update
    return projections, updates, gen


def _ids(tokenizer):
    return tokenizer(["How do I bake bread at home?"], return_tensors="pt")["input_ids"]


def test_zero_update_keeps_logits(tiny_llama):
    model, tokenizer = tiny_llama
    ids = _ids(tokenizer)
    before = model(ids).logits
    _attach_updates(model)
    after = model(ids).logits
    assert torch.equal(before, after)


def test_fold_keeps_logits(tiny_llama):
    model, tokenizer = tiny_llama
    ids = _ids(tokenizer)
    base = model(ids).logits.detach()
    projections, updates, gen = _attach_updates(model)
    with torch.no_grad():
        for update in updates.values():
            update.update.normal_(generator=gen)
    hooked = model(ids).logits.detach()
    for name, update in updates.items():
        update.fold(projections[name])
    folded = model(ids).logits.detach()
    assert (hooked - base).abs().max().item() > 1e-3  # the updates really change the model
    assert (hooked - folded).abs().max().item() <= 1e-5
    assert all(not p._forward_hooks for p in projections.values())


def test_update_changes_only_selected_rows(tiny_llama):
    model, _ = tiny_llama
    projections, updates, gen = _attach_updates(model)
    name = next(iter(projections))
    original = projections[name].weight.detach().clone()
    with torch.no_grad():
        updates[name].update.normal_(generator=gen)
    updates[name].fold(projections[name])
    changed_rows = torch.nonzero((projections[name].weight - original).abs().sum(dim=1) > 0).flatten()
    assert changed_rows.tolist() == [1, 5, 9, 30]


def test_hook_matches_materialised_weights(tiny_llama):
    model, tokenizer = tiny_llama
    projections, updates, gen = _attach_updates(model)
    name = next(iter(projections))
    with torch.no_grad():
        updates[name].update.normal_(generator=gen)
    x = torch.randn(2, 3, projections[name].in_features, generator=gen)
    hooked = projections[name](x)
    reference = projections[name].weight.detach().clone()
    reference[updates[name].neurons] += updates[name].update.detach()[updates[name].assignments]
    expected = x @ reference.T
    assert torch.allclose(hooked, expected, atol=1e-6)


def _frozen_projection_with_update(d_model: int = 8, d_ff: int = 32):
    torch.manual_seed(0)
    projection = torch.nn.Linear(d_model, d_ff, bias=False).requires_grad_(False)
    selection = ModuleSelection("proj", torch.tensor([3, 17, 30]), torch.tensor([0, 1, 0]), 2)
    update = NeuronUpdate(selection, d_model, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        update.update.normal_()
    update.attach(projection)
    return projection, update


def test_hook_adds_in_place():
    projection, _ = _frozen_projection_with_update()
    outputs = []
    projection.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    result = projection(torch.randn(2, 5, 8))
    # The later hook receives the tensor that the update hook returned, which must be the
    # Linear's own output buffer rather than a copy.
    assert result.data_ptr() == outputs[0].data_ptr()


def test_hook_saves_no_full_width_tensor():
    projection, _ = _frozen_projection_with_update(d_model=8, d_ff=32)
    x = torch.randn(2, 5, 8, requires_grad=True)
    saved_sizes = []

    def pack(tensor):
        saved_sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        projection(x)
    full_output = 2 * 5 * 32
    assert saved_sizes, "the update's backward saves nothing, so the hook is not in the graph"
    assert max(saved_sizes) < full_output


def test_hook_gradient_matches_materialised_weights():
    projection, update = _frozen_projection_with_update()
    x = torch.randn(2, 5, 8)
    grad_out = torch.randn(2, 5, 32)
    (projection(x) * grad_out).sum().backward()
    hook_grad = update.update.grad.clone()

    update.update.grad = None
    weight = projection.weight.detach()
    rows = torch.zeros_like(weight).index_add(0, update.neurons, update.update[update.assignments])
    ((x @ (weight + rows).T) * grad_out).sum().backward()
    assert torch.allclose(hook_grad, update.update.grad, atol=1e-5)


def test_only_updates_receive_gradients(tiny_llama):
    model, tokenizer = tiny_llama
    for param in model.parameters():
        param.requires_grad_(False)
    _, updates, _ = _attach_updates(model)
    ids = _ids(tokenizer)
    loss = model(ids, labels=ids).loss
    loss.backward()
    for update in updates.values():
        assert update.update.grad is not None
        assert update.update.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_delta_reproduces_fold(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    projections, updates, gen = _attach_updates(model)
    with torch.no_grad():
        for update in updates.values():
            update.update.normal_(generator=gen)
    save_delta(tmp_path / "delta.safetensors", updates, {"test": True})
    for name, update in updates.items():
        update.fold(projections[name])
    folded = model(_ids(tokenizer)).logits.detach()
    model.load_state_dict(base_state)
    changed = apply_delta(model, tmp_path / "delta.safetensors")
    assert changed == len(updates)
    assert torch.allclose(model(_ids(tokenizer)).logits, folded, atol=1e-6)


def test_adam_probe_matches_torch_adam():
    from nestbench.methods.nest.probes import _fit_adam, _probe_loss

    torch.manual_seed(0)
    x = torch.randn(3, 40, 16)
    target = (torch.rand(40) > 0.5).float().expand(3, -1)
    w_start = torch.randn(3, 16, 1) * 0.01
    w = w_start.clone().requires_grad_()
    b = torch.zeros(3, 1, 1, requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=1e-2, weight_decay=1e-3)
    for _ in range(200):
        optimizer.zero_grad()
        _probe_loss(x, target, w, b).backward()
        optimizer.step()

    w_ours, b_ours = w_start.clone(), torch.zeros(3, 1, 1)
    _fit_adam(x, target, w_ours, b_ours, 1e-2, 1e-3, 200)
    assert w.detach().abs().max() > 0.5  # the weights moved far from the start
    assert torch.allclose(w_ours, w.detach(), atol=1e-5)
    assert torch.allclose(b_ours, b.detach(), atol=1e-5)


def test_selection_rule_on_handmade_weights():
    weights = torch.zeros(100)
    weights[3] = 10.0
    weights[7] = -10.0
    weights[11] = 5.0
    # mean 0.05, population std ~1.5: z(3) ~ 6.6, z(11) ~ 3.3, z(7) negative.
    assert select_safety_neurons(weights, 3.0).tolist() == [3, 11]
    assert select_safety_neurons(weights, 4.0).tolist() == [3]


def test_selection_requires_positive_weight():
    weights = torch.full((10,), -5.0)
    weights[0] = -1.0
    # z(0) = 3.0 exactly in a 10-vector; with a lower threshold it passes z but not w > 0.
    assert select_safety_neurons(weights, 1.0).tolist() == []


def test_constant_weights_select_nothing():
    assert select_safety_neurons(torch.ones(16), 0.0).tolist() == []


def test_silhouette_fallback_to_one_cluster():
    rng = np.random.default_rng(0)
    profiles = rng.normal(size=(20, 8))  # no cluster structure
    result = cluster_neurons(profiles, "default", 2, "raw", 0.9, 4, 0)
    assert result.k == 1
    assert set(result.assignments.tolist()) == {0}
    assert result.fallback is not None


def test_clear_clusters_give_two():
    rng = np.random.default_rng(0)
    profiles = np.concatenate([rng.normal(0, 0.1, (6, 5)), rng.normal(10, 0.1, (6, 5))])
    result = cluster_neurons(profiles, "default", 3, "raw", 0.1, 4, 0)
    assert result.k == 2
    assert result.silhouette > 0.9
    assert len(set(result.assignments[:6].tolist())) == 1


def test_weak_and_strong_modes():
    profiles = np.arange(12, dtype=float).reshape(4, 3)
    assert cluster_neurons(profiles, "weak", 2, "raw", 0.1, 2, 0).k == 1
    strong = cluster_neurons(profiles, "strong", 2, "raw", 0.1, 2, 0)
    assert strong.k == 4
    assert strong.assignments.tolist() == [0, 1, 2, 3]


def test_identical_profiles_one_cluster():
    profiles = np.ones((5, 4))
    result = cluster_neurons(profiles, "default", 2, "raw", 0.1, 2, 0)
    assert result.k == 1


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_probes_separate_planted_signal(solver):
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([1] * 100 + [0] * 100)
    features = torch.randn(2, 200, 16, generator=gen)
    features[:, :, 4] += 4.0 * labels  # neuron 4 fires on harmful prompts
    result = train_probes(features, labels, solver=solver, epochs=300, lr=1e-2, weight_decay=1e-3, seeds=2, holdout=0.2, seed=0)
    assert result.weights.shape == (2, 16)
    assert result.holdout_accuracy.min() > 0.9
    assert select_safety_neurons(result.weights[0], 3.0).tolist() == [4]


def test_pooled_activations_ignore_padding(tiny_llama):
    model, tokenizer = tiny_llama
    projections = find_ffn_projections(model, ("gate_proj",))
    prompts = ["Hi", "A much longer prompt about bread and bicycles and prime numbers"]
    together = pooled_activations(model, tokenizer, prompts, projections, batch_size=2)
    alone = pooled_activations(model, tokenizer, prompts[:1], projections, batch_size=1)
    name = next(iter(projections))
    assert together[name].shape == (2, 64)
    assert torch.allclose(together[name][0], alone[name][0], atol=1e-5)


def test_model_without_gated_ffn_raises():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(UnsupportedModelError, match="gate_proj"):
        find_ffn_projections(model, ("gate_proj", "up_proj"))


def _context(tiny_llama, tmp_path, epochs=1):
    model, tokenizer = tiny_llama
    data = TrainingData(harmful=tuple(HARMFUL), benign=tuple(BENIGN), seed=0, answer_tokens=4)
    data.prepare(model, tokenizer, batch_size=4)
    return TuneContext(model=model, tokenizer=tokenizer, data=data, work_dir=tmp_path, seed=0, epochs=epochs, batch_size=4)


def test_tune_trainable_count_matches_k(tiny_llama, tmp_path):
    method = build_method("nest", {"z_threshold": 1.5, "probe_epochs": 30, "probe_seeds": 1})
    result = method.tune(_context(tiny_llama, tmp_path))
    modules = json.loads((tmp_path / "nest_audit.json").read_text())["modules"]
    expected = sum(m["k"] * 32 for m in modules)  # d_model of the tiny model is 32
    assert result.trainable_parameters == expected
    assert result.trainable_parameters > 0
    assert (tmp_path / "nest_delta.safetensors").is_file()


def test_tune_returns_plain_model(tiny_llama, tmp_path):
    method = build_method("nest", {"z_threshold": 1.5, "probe_epochs": 30, "probe_seeds": 1})
    result = method.tune(_context(tiny_llama, tmp_path))
    projections = find_ffn_projections(result.model, ("gate_proj", "up_proj"))
    assert all(not p._forward_hooks for p in projections.values())
    assert type(result.model).__name__ == "LlamaForCausalLM"


def test_empty_selection_raises(tiny_llama, tmp_path):
    method = build_method("nest", {"z_threshold": 1000.0, "probe_epochs": 5, "probe_seeds": 1})
    with pytest.raises(NoSafetyNeuronsError, match="z_threshold"):
        method.tune(_context(tiny_llama, tmp_path))


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [("z_threshold", -1, "z_threshold"), ("k_max", 0, "k_max"), ("lr", "fast", "lr"), ("clustering", "medium", "clustering")],
)
def test_invalid_recipe_values(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_method_config("nest", {key: value})


def test_unknown_recipe_key():
    with pytest.raises(ConfigError, match="unknown key"):
        load_method_config("nest", {"z_treshold": 2})
