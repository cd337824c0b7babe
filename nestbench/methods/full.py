"""Full fine-tuning: every parameter trained on the shared SFT data."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nestbench.methods.base import Method, TuneContext, TuneResult, register_method
from nestbench.methods.supervised import SupervisedConfig, parameter_names
from nestbench.sft import train_sft

logger = logging.getLogger(__name__)


@dataclass
class FullConfig(SupervisedConfig):
    """Full fine-tuning settings: AdamW on all weights, lr in the usual 1e-5 to 2e-5 range."""

    lr: float = 2e-5
    # One epoch keeps a quick-profile CPU run of all methods in budget; null uses the
    # profile's epochs, as the other SFT methods do.
    epochs: int | None = 1
    # Recompute activations in the backward pass, which saves memory and costs time.
    gradient_checkpointing: bool = False


@register_method
class FullMethod(Method):
    """Full fine-tuning: all parameters trained on the same SFT data as NeST."""

    name = "full"
    config_class = FullConfig
    config: FullConfig

    def tune(self, context: TuneContext) -> TuneResult:
        cfg = self.config
        model = context.model
        for param in model.parameters():
            param.requires_grad_(True)
        trainable = sum(p.numel() for p in model.parameters())
        logger.info("full fine-tuning of all %d parameters", trainable)

        checkpointing = cfg.gradient_checkpointing and model.supports_gradient_checkpointing
        if cfg.gradient_checkpointing and not checkpointing:
            logger.warning("%s does not support gradient checkpointing; training without it", type(model).__name__)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        try:
            stats = train_sft(
                model, context.tokenizer, context.data.examples(), model.parameters(), cfg.train_settings(context)
            )
        finally:
            if checkpointing:
                model.gradient_checkpointing_disable()
        return TuneResult(
            model=model,
            trainable_parameters=trainable,
            report={"best_val_loss": stats.best_val_loss, "best_epoch": stats.best_epoch, "steps": stats.steps,
                    "training_seconds": stats.seconds},
            loss_curve=stats.loss_curve,
            modified_parameters=parameter_names(model),
        )
