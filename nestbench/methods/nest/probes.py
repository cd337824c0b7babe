"""Steps 1-4 of NeST: pooled FFN activations, linear probes, and safety-neuron selection."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from nestbench.errors import UnsupportedModelError
from nestbench.sft import chat_prompt

logger = logging.getLogger(__name__)


def find_ffn_projections(model: nn.Module, projections: Sequence[str]) -> dict[str, nn.Linear]:
    """Return ``{module name: nn.Linear}`` for every requested gated-FFN projection, in layer order."""
    found: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in projections and isinstance(module, nn.Linear) and ".mlp." in f".{name}":
            found[name] = module
    if not found:
        linear_leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise UnsupportedModelError(
            f"NeST needs gated feed-forward projections named {list(projections)} inside '.mlp.' modules "
            f"(as in Llama, Qwen, Mistral or Gemma), but {type(model).__name__} has none. Its linear layers are "
            f"named {linear_leaves}; set 'projections' in the recipe if this model uses other names."
        )
    return found


@torch.no_grad()
def pooled_activations(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    modules: dict[str, nn.Linear],
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """Record each projection's output max-pooled over the prompt's tokens.

    Prompts are wrapped in the chat template with the generation prompt. Padding positions
    are excluded from the max. Returns ``{module name: (N, d_ff) float32 tensor on CPU}``.
    """
    model.eval()
    device = next(model.parameters()).device
    pooled: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    mask_holder: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            mask = mask_holder["mask"].unsqueeze(-1)  # (B, T, 1), True on real tokens
            masked = output.float().masked_fill(~mask, float("-inf"))
            pooled[name].append(masked.amax(dim=1).cpu())

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for start in tqdm(range(0, len(texts), batch_size), desc="probe activations", leave=False):
            enc = tokenizer(
                texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            mask_holder["mask"] = enc["attention_mask"].bool()
            model(**enc)
    finally:
        tokenizer.padding_side = old_side
        for handle in handles:
            handle.remove()
    return {name: torch.cat(chunks) for name, chunks in pooled.items()}


@dataclass
class ProbeResult:
    weights: torch.Tensor  # (M, d_ff): probe weights on standardised features, averaged over seeds
    holdout_accuracy: torch.Tensor  # (M,): mean held-out accuracy over seeds
    train_accuracy: torch.Tensor  # (M,)


def stratified_split(labels: torch.Tensor, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (train, holdout) index tensors with the same class balance in both parts."""
    gen = torch.Generator().manual_seed(seed)
    train_parts, hold_parts = [], []
    for cls in (0, 1):
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_hold = max(1, round(len(idx) * holdout)) if len(idx) > 1 else 0
        hold_parts.append(idx[:n_hold])
        train_parts.append(idx[n_hold:])
    return torch.cat(train_parts), torch.cat(hold_parts)


def train_probes(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    solver: str = "adam",
    epochs: int,
    lr: float,
    weight_decay: float,
    seeds: int,
    holdout: float,
    seed: int,
    max_iter: int = 500,
) -> ProbeResult:
    """Train one logistic-regression probe per module, all modules at once.

    ``features`` is (M modules, N prompts, d_ff). Each neuron is standardised with the
    training split's mean and std, so weights are comparable across neurons. The loss is
    binary cross-entropy plus ``weight_decay / 2 * ||w||^2`` (Adam's coupled weight decay).
    ``adam`` runs full-batch Adam for ``epochs`` from ``seeds`` random initialisations and
    averages the weights. ``lbfgs`` minimises the same convex loss with L-BFGS; its optimum
    does not depend on the initialisation, so it runs once.
    """
    n_modules, _, d_ff = features.shape
    labels = labels.float()
    train_idx, hold_idx = stratified_split(labels, holdout, seed)
    x_train, y_train = features[:, train_idx], labels[train_idx]
    mean = x_train.mean(dim=1, keepdim=True)
    std = x_train.std(dim=1, keepdim=True).clamp_min(1e-6)
    x_train = (x_train - mean) / std
    x_hold = (features[:, hold_idx] - mean) / std
    y_hold = labels[hold_idx]
    target = y_train.expand(n_modules, -1)

    runs = 1 if solver == "lbfgs" else seeds
    weight_sum = torch.zeros(n_modules, d_ff)
    hold_acc_sum = torch.zeros(n_modules)
    train_acc_sum = torch.zeros(n_modules)
    for run in range(runs):
        gen = torch.Generator().manual_seed(seed + run)
        w = (torch.randn(n_modules, d_ff, 1, generator=gen) * 0.01).requires_grad_()
        b = torch.zeros(n_modules, 1, 1, requires_grad=True)
        if solver == "lbfgs":
            _fit_lbfgs(x_train, target, w, b, weight_decay, max_iter)
        else:
            _fit_adam(x_train, target, w, b, lr, weight_decay, epochs, desc=f"probes (seed {run + 1}/{runs})")
        with torch.no_grad():
            weight_sum += w.squeeze(-1)
            train_acc_sum += _accuracy(x_train, w, b, y_train)
            hold_acc_sum += _accuracy(x_hold, w, b, y_hold)
    return ProbeResult(weight_sum / runs, hold_acc_sum / runs, train_acc_sum / runs)


def _probe_loss(x, target, w, b) -> torch.Tensor:
    logits = torch.bmm(x, w).squeeze(-1) + b.squeeze(-1)
    # Summing the per-module mean losses keeps each module's gradient equal to that of its
    # own probe, because the modules share no parameters.
    return nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1).sum()


def _fit_adam(x, target, w, b, lr, weight_decay, epochs, desc) -> None:
    optimizer = torch.optim.Adam([w, b], lr=lr, weight_decay=weight_decay)
    for _ in tqdm(range(epochs), desc=desc, leave=False):
        loss = _probe_loss(x, target, w, b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _fit_lbfgs(x, target, w, b, weight_decay, max_iter) -> None:
    optimizer = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-6, tolerance_change=1e-10,
    )

    def closure():
        optimizer.zero_grad(set_to_none=True)
        # Adam's coupled weight decay adds weight_decay * w to the gradient, which is the
        # gradient of weight_decay / 2 * ||w||^2 on the weights (not the bias).
        loss = _probe_loss(x, target, w, b) + 0.5 * weight_decay * w.pow(2).sum() + 0.5 * weight_decay * b.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)


def _accuracy(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 0:
        return torch.full((x.shape[0],), float("nan"))
    predictions = (torch.bmm(x, w).squeeze(-1) + b.squeeze(-1)) > 0
    return (predictions == y.bool()).float().mean(dim=1)


def select_safety_neurons(weights: torch.Tensor, z_threshold: float) -> torch.Tensor:
    """Return the indices of neurons whose weight z-score exceeds the threshold and whose weight is positive.

    The z-score uses the population standard deviation of the module's probe weights.
    """
    std = weights.std(unbiased=False)
    if std == 0:
        return torch.empty(0, dtype=torch.long)
    z = (weights - weights.mean()) / std
    return torch.nonzero((z > z_threshold) & (weights > 0)).flatten()
