"""Circuit breakers: Representation Rerouting with LoRA (Zou et al. 2024, arXiv 2406.04313).

LoRA adapters are trained to make the hidden states of harmful prompt + completion pairs
orthogonal to the frozen model's states at the target layers. On the retain set (the
shared SFT examples) the states must stay close to the frozen ones. The frozen states come
from the same model with the adapter disabled, and the adapter is merged at the end, so
evaluation sees a plain model.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig as PeftLoraConfig
from tqdm.auto import tqdm

from nestbench.config import require
from nestbench.errors import ConfigError, TrainingDivergedError
from nestbench.judges import make_judge
from nestbench.methods.adapters import adapted_weight_names, attach_lora, discard, save_and_merge
from nestbench.methods.base import Method, MethodConfig, TuneContext, TuneResult, count_trainable, register_method
from nestbench.sft import SFTExample, chat_prompt, collate, generate_greedy, tokenize_example

logger = logging.getLogger(__name__)

# Target layers of the reference setting (hidden states 10 and 20 of Llama-3-8B's 32
# layers), kept as fractions of depth so other models get the same relative positions.
REFERENCE_TARGET_FRACTIONS = (10 / 32, 20 / 32)
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class CircuitBreakersConfig(MethodConfig):
    """Representation Rerouting settings, with the reference values for Llama-3-8B in the comments."""

    # Hidden-state indices (1..num_layers, the output of decoder layer index - 1) whose
    # representations are rerouted. Empty: the reference's 10/32 and 20/32 of the depth.
    target_layers: tuple[int, ...] = ()
    alpha: float = 10.0  # loss-coefficient scale of the c_s/c_r schedule (reference 10)
    steps: int = 60  # optimiser steps T of the schedule (reference 150)
    batch_size: int | None = None  # pairs per step from each set; None: the profile's batch size (reference 16)
    lr: float = 1e-4  # constant (reference 1e-4)
    grad_clip: float | None = None
    rank: int = 16
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    # LoRA goes on these linear layers of decoder layers 0..max(target)-1; higher layers
    # do not affect the loss.
    target_modules: tuple[str, ...] = ALL_LINEAR
    max_length: int = 256
    # A JSONL file with "prompt" and "completion" per line. When empty, the base model
    # generates completions for the harmful training prompts.
    harmful_completions: str = ""
    # Drop generated completions that the keyword judge labels refused or degenerate,
    # because they hold no harmful representation to reroute.
    drop_refused_completions: bool = True
    generation_batch_size: int = 32  # prompts per batch when generating completions; memory grows with it

    def __post_init__(self) -> None:
        require(all(layer >= 1 for layer in self.target_layers),
                f"target_layers must be hidden-state indices >= 1, got {list(self.target_layers)}")
        require(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        require(self.batch_size is None or self.batch_size >= 1, f"batch_size must be >= 1 or null, got {self.batch_size}")
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or null, got {self.grad_clip}")
        require(self.rank >= 1, f"rank must be >= 1, got {self.rank}")
        require(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}")
        require(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        require(len(self.target_modules) > 0, "target_modules must name at least one linear layer, e.g. [q_proj]")
        require(self.max_length >= 8, f"max_length must be >= 8 tokens, got {self.max_length}")
        require(self.generation_batch_size >= 1, f"generation_batch_size must be >= 1, got {self.generation_batch_size}")


def resolve_target_layers(configured: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Return the sorted hidden-state indices to reroute, scaled to depth when none are configured."""
    if configured:
        too_deep = [layer for layer in configured if layer > num_layers]
        if too_deep:
            raise ConfigError(
                f"target_layers {too_deep} exceed the model's {num_layers} layers; "
                f"use hidden-state indices from 1 to {num_layers}"
            )
        return tuple(sorted(set(configured)))
    return tuple(sorted({max(1, round(f * num_layers)) for f in REFERENCE_TARGET_FRACTIONS}))


# NOTE: the gradient of the rerouting term scales with c_s / ||h||, and that of the retain
# term with c_r. SmolLM2-135M's hidden states have norms of about 150 at the target layers,
# so the retain term dominates from the first steps. In 12-step checks on 8 pairs (lr 1e-3,
# one CPU thread) the rerouting loss stayed above 0.99, and fell to 0.57 with the retain
# term switched off. With the recipe defaults (60 steps of 8 pairs) the quick-profile run
# ended at rerouting loss 1.0, and the merged model scored like the untouched one. The
# reference values were set for Llama-3-8B.
def schedule(step: int, total: int, alpha: float) -> tuple[float, float]:
    """Return (c_s, c_r) at ``step`` of ``total``: rerouting weight falls, retain weight rises."""
    progress = step / (2 * total)
    return alpha * (1 - progress), alpha * progress


def rerouting_loss(lora_states: Sequence[torch.Tensor], frozen_states: Sequence[torch.Tensor],
                   mask: torch.Tensor) -> torch.Tensor:
    """Mean over layers and unmasked tokens of relu(cos(h_lora, h_frozen))."""
    weights = mask.to(lora_states[0].dtype)
    per_layer = [
        (F.relu(F.cosine_similarity(h, f, dim=-1)) * weights).sum() / weights.sum()
        for h, f in zip(lora_states, frozen_states)
    ]
    return torch.stack(per_layer).mean()


def retain_loss(lora_states: Sequence[torch.Tensor], frozen_states: Sequence[torch.Tensor],
                mask: torch.Tensor) -> torch.Tensor:
    """Mean over layers and unmasked tokens of the L2 distance ||h_lora - h_frozen||.

    The caller passes hidden states 0..max(target), so the embedding state counts as a
    layer (its distance is zero while the embeddings carry no adapter).
    """
    weights = mask.to(lora_states[0].dtype)
    per_layer = [((h - f).norm(dim=-1) * weights).sum() / weights.sum() for h, f in zip(lora_states, frozen_states)]
    return torch.stack(per_layer).mean()


class _StopForward(Exception):
    """Raised by a hook after the last needed layer, so higher layers are never computed."""


class HiddenStateRecorder:
    """Record hidden states 0..last of a forward pass and skip the layers above ``last``.

    Hidden state 0 is the token embedding and state ``i`` the output of decoder layer
    ``i - 1``, as in the ``hidden_states`` output of transformers models.
    """

    def __init__(self, embeddings: torch.nn.Module, decoder_layers: torch.nn.ModuleList, last: int):
        self.modules = [embeddings, *decoder_layers[:last]]

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        states: list[torch.Tensor] = []

        def hook(_module, _inputs, output):
            states.append(output[0] if isinstance(output, tuple) else output)
            if len(states) == len(self.modules):
                raise _StopForward

        handles = [module.register_forward_hook(hook) for module in self.modules]
        try:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return states


def find_decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """Return the model's list of decoder layers (the ModuleList with num_hidden_layers entries)."""
    count = model.config.num_hidden_layers
    for _name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ConfigError(
        f"circuit breakers need the decoder layers of {type(model).__name__}, but it has no list of "
        f"{count} layers; use a decoder-only transformer such as Llama, Qwen or Mistral"
    )


def read_completions_file(path: Path) -> list[tuple[str, str]]:
    """Read harmful (prompt, completion) pairs from a JSONL file with those two fields per line."""
    if not path.is_file():
        raise ConfigError(f"harmful completions file not found: {path}; pass a JSONL file with prompt and completion")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} line {number} is not valid JSON: {err.msg}") from err
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k].strip() for k in ("prompt", "completion")):
            raise ConfigError(f"{path} line {number} needs non-empty string fields \"prompt\" and \"completion\"")
        pairs.append((row["prompt"], row["completion"]))
    if not pairs:
        raise ConfigError(f"harmful completions file {path} has no pairs")
    return pairs


def select_harmful_pairs(prompts: Sequence[str], answers: Sequence[str], drop_refused: bool) -> list[tuple[str, str]]:
    """Pair prompts with non-empty answers, keeping only keyword-judge "unsafe" ones when ``drop_refused``."""
    pairs = [(p, a) for p, a in zip(prompts, answers) if a.strip()]
    if drop_refused:
        judge = make_judge("keyword")
        pairs = [(p, a) for p, a in pairs if judge.judge(p, a).label == "unsafe"]
    if not pairs:
        raise ConfigError(
            f"the base model refused or gave empty or degenerate answers to all {len(prompts)} harmful training "
            "prompts, so there is no harmful completion to reroute; pass completions with "
            "--set harmful_completions=FILE.jsonl or keep every answer with --set drop_refused_completions=false"
        )
    return pairs


def template_prefix_length(tokenizer) -> int:
    """Return the number of chat-template tokens before the user's text (a default system prompt included)."""
    first = tokenizer(chat_prompt(tokenizer, "alpha"), add_special_tokens=False)["input_ids"]
    second = tokenizer(chat_prompt(tokenizer, "omega"), add_special_tokens=False)["input_ids"]
    length = 0
    while length < min(len(first), len(second)) and first[length] == second[length]:
        length += 1
    return length


def _cycle(items: list, batch_size: int, seed: int) -> Iterator[list]:
    """Yield batches forever, reshuffling at each pass over ``items``."""
    rng = random.Random(seed)
    while True:
        order = list(items)
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]


@register_method
class CircuitBreakersMethod(Method):
    """Circuit breakers (Representation Rerouting): LoRA trained to scramble harmful representations."""

    name = "circuit-breakers"
    config_class = CircuitBreakersConfig
    config: CircuitBreakersConfig

    def tune(self, context: TuneContext) -> TuneResult:
        cfg = self.config
        model, tokenizer = context.model, context.tokenizer
        decoder_layers = find_decoder_layers(model)
        targets = resolve_target_layers(cfg.target_layers, len(decoder_layers))
        last = max(targets)
        pairs, pair_source = self._harmful_pairs(context)
        retain_examples = context.data.examples()
        logger.info("circuit breakers: %d harmful pairs (%s), %d retain examples, target hidden states %s",
                    len(pairs), pair_source, len(retain_examples), list(targets))

        cb_items = [tokenize_example(tokenizer, SFTExample(p, c, "harmful"), cfg.max_length) for p, c in pairs]
        retain_items = [tokenize_example(tokenizer, ex, cfg.max_length) for ex in retain_examples]
        peft_model = attach_lora(model, PeftLoraConfig(
            r=cfg.rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules), layers_to_transform=list(range(last)),
        ))
        trainable = count_trainable(peft_model.parameters())
        logger.info("LoRA rank %d on decoder layers 0..%d: %d trainable parameters", cfg.rank, last - 1, trainable)
        try:
            loss_curve, seconds = self._train(peft_model, decoder_layers, targets, cb_items, retain_items, context)
        except BaseException:
            discard(peft_model)
            raise
        modified = adapted_weight_names(peft_model)
        adapter_dir = context.work_dir / "adapter"
        merged = save_and_merge(peft_model, adapter_dir)
        return TuneResult(
            model=merged,
            trainable_parameters=trainable,
            report={"target_layers": list(targets), "steps": cfg.steps, "harmful_pairs": len(pairs),
                    "harmful_pair_source": pair_source, "retain_examples": len(retain_examples),
                    "training_seconds": seconds, "final": loss_curve[-1], "adapted_modules": len(modified)},
            artifacts={"adapter": str(adapter_dir)},
            loss_curve=loss_curve,
            modified_parameters=modified,
        )

    def _harmful_pairs(self, context: TuneContext) -> tuple[list[tuple[str, str]], str]:
        """Return the circuit-breaker set, read from the configured file or generated by the base model."""
        cfg = self.config
        if cfg.harmful_completions:
            return read_completions_file(Path(cfg.harmful_completions)), cfg.harmful_completions
        prompts = list(context.data.harmful)
        answers = generate_greedy(context.model, context.tokenizer, prompts, context.data.answer_tokens,
                                  cfg.generation_batch_size, desc="harmful completions")
        pairs = select_harmful_pairs(prompts, answers, cfg.drop_refused_completions)
        logger.info("kept %d of the base model's %d answers to harmful prompts", len(pairs), len(prompts))
        return pairs, "base model"

    def _train(self, peft_model, decoder_layers, targets, cb_items, retain_items, context):
        cfg = self.config
        batch_size = cfg.batch_size or context.batch_size
        pad_id = context.tokenizer.pad_token_id if context.tokenizer.pad_token_id is not None else 0
        device = next(peft_model.parameters()).device
        recorder = HiddenStateRecorder(peft_model.get_input_embeddings(), decoder_layers, max(targets))
        # The template tokens before the user's text are the same in harmful and retain
        # examples, and causal attention gives them the same states, so rerouting them
        # would fight the retain loss. The rerouting loss skips them.
        prefix = template_prefix_length(context.tokenizer)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        cb_batches = _cycle(cb_items, batch_size, context.seed)
        retain_batches = _cycle(retain_items, batch_size, context.seed + 1)
        loss_curve: list[dict[str, float]] = []

        start = time.perf_counter()
        peft_model.train()
        progress = tqdm(range(1, cfg.steps + 1), desc="circuit breakers", leave=False)
        for step in progress:
            c_s, c_r = schedule(step, cfg.steps, cfg.alpha)
            cb = {k: v.to(device) for k, v in collate(next(cb_batches), pad_id).items()}
            retain = {k: v.to(device) for k, v in collate(next(retain_batches), pad_id).items()}

            with torch.no_grad(), peft_model.disable_adapter():
                frozen_cb = recorder(peft_model, cb)
                frozen_retain = recorder(peft_model, retain)
            lora_cb = recorder(peft_model, cb)
            lora_retain = recorder(peft_model, retain)

            reroute_mask = cb["attention_mask"].clone()
            reroute_mask[:, :prefix] = 0
            loss_s = rerouting_loss([lora_cb[i] for i in targets], [frozen_cb[i] for i in targets], reroute_mask)
            loss_r = retain_loss(lora_retain, frozen_retain, retain["attention_mask"])
            loss = c_s * loss_s + c_r * loss_r
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"circuit-breaker loss became {loss.item()} at step {step}; lower lr (currently {cfg.lr})",
                    step=step,
                )

            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_curve.append({"step": step, "train_loss": loss.item(), "rerouting_loss": loss_s.item(),
                               "retain_loss": loss_r.item(), "c_s": c_s, "c_r": c_r})
            progress.set_postfix(rerouting=f"{loss_s.item():.3f}", retain=f"{loss_r.item():.3f}")
        peft_model.eval()
        return loss_curve, time.perf_counter() - start
