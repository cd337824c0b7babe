"""Settings and helpers shared by the methods that train on the shared SFT data."""

from __future__ import annotations

from dataclasses import dataclass
import torch

from nestbench.config import require
from nestbench.methods.base import MethodConfig, TuneContext
from nestbench.sft import TrainSettings


@dataclass
class SupervisedConfig(MethodConfig):
    """Training settings of a method that runs ``train_sft`` on the shared SFT data."""

    lr: float = 2e-5
    weight_decay: float = 0.0
    # None trains for the profile's epochs (3 in quick, 5 in full).
    epochs: int | None = None
    val_fraction: float = 0.05
    max_length: int = 256
    grad_clip: float | None = 1.0
    select_best: bool = True

    def __post_init__(self) -> None:
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        require(self.epochs is None or self.epochs >= 1, f"epochs must be >= 1 or null (the profile's), got {self.epochs}")
        require(0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        require(self.max_length >= 8, f"max_length must be >= 8 tokens, got {self.max_length}")
        require(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or null, got {self.grad_clip}")

    def train_settings(self, context: TuneContext) -> TrainSettings:
        return TrainSettings(
            lr=self.lr,
            weight_decay=self.weight_decay,
            epochs=self.epochs if self.epochs is not None else context.epochs,
            batch_size=context.batch_size,
            val_fraction=self.val_fraction,
            max_length=self.max_length,
            grad_clip=self.grad_clip,
            seed=context.seed,
            select_best=self.select_best,
        )


def parameter_names(model: torch.nn.Module, trainable_only: bool = False) -> tuple[str, ...]:
    return tuple(name for name, p in model.named_parameters() if p.requires_grad or not trainable_only)

