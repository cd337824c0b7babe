"""Supervised safety data shared by every tuning method, and the training loop they use.

Harmful prompts are paired with refusal texts; benign prompts with the base model's own
greedy answers (self-distillation), so training teaches refusal without pulling the model
towards another model's style. The loss covers assistant tokens only.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from nestbench.errors import ConfigError, TrainingDivergedError

logger = logging.getLogger(__name__)

# Varied refusals written for this project. Each one opens with a phrase that the keyword
# judge recognises as a refusal, so "refused" means the same thing in training and scoring.
REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that request.",
    "I can't help with that. It could cause serious harm to people.",
    "I'm sorry, but I cannot assist with that.",
    "I cannot provide that information because it could be used to hurt someone.",
    "I'm not able to help with this request.",
    "Sorry, I can't assist with that. If you have another question, I'm happy to help.",
    "I won't help with that, because it could put people in danger.",
    "I'm sorry, I can't provide instructions for that.",
    "I cannot help with this. It may be illegal and harmful.",
    "I'm sorry, but that's not something I can help with.",
    "I can't assist with requests like this one.",
    "I'm unable to help with that request.",
)


@dataclass(frozen=True)
class SFTExample:
    prompt: str
    target: str
    kind: str  # "harmful" or "benign"


@dataclass
class TrainingData:
    """The prompts every method trains on, prepared once per run and shared.

    ``benign_answers`` is filled by ``prepare`` with the untouched base model, so it must
    run before any method changes the model.
    """

    harmful: tuple[str, ...]
    benign: tuple[str, ...]
    seed: int
    answer_tokens: int
    refusals: tuple[str, ...] = REFUSALS
    benign_answers: list[str] | None = None
    generation_seconds: float = 0.0

    def prepare(self, model, tokenizer, batch_size: int) -> None:
        """Generate the base model's greedy answers to the benign prompts (once)."""
        if self.benign_answers is not None:
            return
        start = time.perf_counter()
        self.benign_answers = generate_greedy(
            model, tokenizer, self.benign, self.answer_tokens, batch_size, desc="self-distillation answers"
        )
        self.generation_seconds = time.perf_counter() - start
        logger.info(
            "generated %d benign answers (max %d tokens) in %.1f s",
            len(self.benign_answers), self.answer_tokens, self.generation_seconds,
        )

    def examples(self) -> list[SFTExample]:
        """Return the SFT examples: each harmful prompt with a refusal, each benign one with its answer."""
        if self.benign_answers is None:
            raise RuntimeError("TrainingData.prepare() must run before examples() is called")
        rng = random.Random(self.seed)
        harmful = [SFTExample(p, rng.choice(self.refusals), "harmful") for p in self.harmful]
        benign = [
            SFTExample(p, a, "benign") for p, a in zip(self.benign, self.benign_answers) if a.strip()
        ]
        return harmful + benign


def chat_prompt(tokenizer, prompt: str) -> str:
    """Return ``prompt`` as a user turn in the tokenizer's chat template, ready for the answer."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


@torch.no_grad()
def generate_greedy(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int, desc: str = "generating"
) -> list[str]:
    """Generate greedy chat answers for ``prompts``, batched with left padding, in input order."""
    model.eval()
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    # Sorting by length keeps padding (and wasted compute) small inside each batch.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[str] = [""] * len(texts)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            batch_ids = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in batch_ids], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            for i, row in zip(batch_ids, new_tokens):
                answers[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side = old_side
    return answers


def tokenize_example(tokenizer, example: SFTExample, max_length: int) -> tuple[list[int], list[int]]:
    """Tokenise one example as a chat exchange; labels are -100 everywhere but the answer."""
    prompt_text = chat_prompt(tokenizer, example.prompt)
    full_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": example.prompt}, {"role": "assistant", "content": example.target}],
        tokenize=False,
    )
    if not full_text.startswith(prompt_text):
        # Templates that rewrite earlier turns: fall back to prompt + answer + EOS.
        full_text = prompt_text + example.target + (tokenizer.eos_token or "")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) + answer_ids)[:max_length]
    return input_ids, labels


def collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of (input_ids, labels) pairs into tensors."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


@dataclass
class TrainSettings:
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    val_fraction: float
    max_length: int
    grad_clip: float | None
    seed: int
    select_best: bool = True


@dataclass
class TrainStats:
    loss_curve: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    best_val_loss: float | None = None
    best_epoch: int | None = None
    seconds: float = 0.0


def split_train_val(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """Shuffle and split ``items``; the validation part has at least one item when fraction > 0."""
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    n_val = math.ceil(len(shuffled) * fraction) if fraction > 0 else 0
    n_val = min(n_val, len(shuffled) - 1)
    return shuffled[n_val:], shuffled[:n_val]


def train_sft(
    model,
    tokenizer,
    examples: Sequence[SFTExample],
    parameters: Iterable[torch.nn.Parameter],
    settings: TrainSettings,
    loss_fn: Callable | None = None,
) -> TrainStats:
    """Train ``parameters`` with AdamW on the language-modelling loss over assistant tokens.

    When ``select_best`` is set and a validation split exists, the parameters are restored
    to the epoch with the lowest validation loss. A NaN or infinite loss raises
    ``TrainingDivergedError`` with the step, leaving the parameters of the last good step.
    """
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: the method marked no parameter as trainable")
    if not examples:
        raise ConfigError("no training examples: the training prompt sets are empty")
    device = params[0].device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [tokenize_example(tokenizer, ex, settings.max_length) for ex in examples]
    train_items, val_items = split_train_val(encoded, settings.val_fraction, settings.seed)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    generator = random.Random(settings.seed)
    stats = TrainStats()
    best_state: list[torch.Tensor] | None = None
    start = time.perf_counter()

    for epoch in range(1, settings.epochs + 1):
        model.train()
        generator.shuffle(train_items)
        batches = [train_items[i : i + settings.batch_size] for i in range(0, len(train_items), settings.batch_size)]
        progress = tqdm(batches, desc=f"epoch {epoch}/{settings.epochs}", leave=False)
        for batch in progress:
            inputs = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
            loss = model(**inputs).loss if loss_fn is None else loss_fn(model, inputs)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"training loss became {loss.item()} at step {stats.steps + 1}; lower the learning rate "
                    f"(currently {settings.lr}) or enable gradient clipping",
                    step=stats.steps + 1,
                    loss_curve=stats.loss_curve,
                )
            loss.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            stats.steps += 1
            stats.loss_curve.append({"step": stats.steps, "epoch": epoch, "train_loss": loss.item()})
            progress.set_postfix(loss=f"{loss.item():.3f}")

        if val_items:
            val_loss = evaluate_loss(model, val_items, pad_id, settings.batch_size, device, loss_fn)
            stats.loss_curve.append({"step": stats.steps, "epoch": epoch, "val_loss": val_loss})
            logger.info("epoch %d: validation loss %.4f", epoch, val_loss)
            if settings.select_best and (stats.best_val_loss is None or val_loss < stats.best_val_loss):
                stats.best_val_loss, stats.best_epoch = val_loss, epoch
                best_state = [p.detach().clone() for p in params]

    if best_state is not None and stats.best_epoch != settings.epochs:
        logger.info("restoring the parameters of epoch %d (lowest validation loss)", stats.best_epoch)
        with torch.no_grad():
            for p, saved in zip(params, best_state):
                p.copy_(saved)
    model.eval()
    stats.seconds = time.perf_counter() - start
    return stats


@torch.no_grad()
def evaluate_loss(model, items, pad_id: int, batch_size: int, device, loss_fn: Callable | None = None) -> float:
    """Return the mean per-batch loss over ``items`` (token-weighted within each batch)."""
    model.eval()
    total, batches = 0.0, 0
    for i in range(0, len(items), batch_size):
        inputs = {k: v.to(device) for k, v in collate(items[i : i + batch_size], pad_id).items()}
        loss = model(**inputs).loss if loss_fn is None else loss_fn(model, inputs)
        total += loss.item()
        batches += 1
    model.train()
    return total / max(batches, 1)
