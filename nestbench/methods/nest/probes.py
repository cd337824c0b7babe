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
    """Train one logistic-regression probe per module.

    ``features`` is (M modules, N prompts, d_ff). Each neuron is standardised with the
    training split's mean and std, so weights are comparable across neurons. The loss is
    binary cross-entropy plus ``weight_decay / 2 * ||w||^2`` (Adam's coupled weight decay).
    ``adam`` runs full-batch Adam for ``epochs`` from ``seeds`` random initialisations and
    averages the weights. ``lbfgs`` minimises the same convex loss with L-BFGS until each
    module's gradient is below tolerance or ``max_iter`` iterations; its optimum does not
    depend on the initialisation, so it runs once.

    Modules are trained one after another. The modules share no parameters and Adam's
    update is elementwise, so this gives the same weights as one batched problem, but one
    module's features (N x d_ff floats) stay in the CPU cache across iterations. Float rounding
    may still differ in the last bits.
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
        w_init = torch.randn(n_modules, d_ff, 1, generator=gen) * 0.01
        for m in tqdm(range(n_modules), desc=f"probes ({solver}, seed {run + 1}/{runs})", leave=False):
            # Slices keep a leading module dimension of 1, so one code path serves any count.
            part = slice(m, m + 1)
            w = w_init[part].clone().requires_grad_()
            b = torch.zeros(1, 1, 1, requires_grad=True)
            if solver == "lbfgs":
                _fit_lbfgs(x_train[part], target[part], w, b, weight_decay, max_iter)
            else:
                _fit_adam(x_train[part], target[part], w, b, lr, weight_decay, epochs)
            with torch.no_grad():
                weight_sum[part] += w.squeeze(-1)
                train_acc_sum[part] += _accuracy(x_train[part], w, b, y_train)
                hold_acc_sum[part] += _accuracy(x_hold[part], w, b, y_hold)
    return ProbeResult(weight_sum / runs, hold_acc_sum / runs, train_acc_sum / runs)


def _probe_loss(x, target, w, b) -> torch.Tensor:
    logits = torch.bmm(x, w).squeeze(-1) + b.squeeze(-1)
    # Summing the per-module mean losses keeps each module's gradient equal to that of its
    # own probe, because the modules share no parameters.
    return nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1).sum()


@torch.no_grad()
def _fit_adam(x, target, w, b, lr, weight_decay, epochs, betas=(0.9, 0.999), eps=1e-8) -> None:
    """Run full-batch Adam with coupled weight decay, as ``torch.optim.Adam`` computes it.

    The gradient of the mean cross-entropy is written out, ``X^T (sigmoid(Xw + b) - y) / N``,
    so an epoch is two matrix-vector products and a few vector operations, without the
    autograd graph and optimizer bookkeeping that cost more than the products on one module.
    """
    beta1, beta2 = betas
    n = x.shape[1]
    params = (w, b)
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    for step in range(1, epochs + 1):
        residual = (torch.sigmoid(torch.bmm(x, w) + b) - target.unsqueeze(-1)) / n  # (M, N, 1)
        grads = (torch.bmm(x.transpose(1, 2), residual), residual.sum(dim=1, keepdim=True))
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        for param, grad, avg, avg_sq in zip(params, grads, exp_avg, exp_avg_sq):
            grad = grad.add(param, alpha=weight_decay)
            avg.lerp_(grad, 1 - beta1)
            avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            param.addcdiv_(avg, denom, value=-lr / bias_correction1)


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
