"""LoRA fine-tuning with PEFT on the shared SFT data, merged into the weights for evaluation."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from peft import LoraConfig as PeftLoraConfig

from nestbench.config import require
from nestbench.methods.adapters import adapted_weight_names, attach_lora, discard, save_and_merge
from nestbench.methods.base import Method, TuneContext, TuneResult, count_trainable, register_method
from nestbench.methods.supervised import SupervisedConfig
from nestbench.sft import train_sft

logger = logging.getLogger(__name__)


@dataclass
class LoraConfig(SupervisedConfig):
    """LoRA settings. ``rank=1`` on the FFN projections is the LoRA baseline of NeST (arXiv 2602.16835)."""

    lr: float = 1e-3
    # One epoch keeps a quick-profile CPU run of all methods in budget; null uses the profile's.
    epochs: int | None = 1
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.rank >= 1, f"rank must be >= 1, got {self.rank}")
        require(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        require(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        require(len(self.target_modules) > 0, "target_modules must name at least one linear layer, e.g. [gate_proj]")

    def peft_config(self) -> PeftLoraConfig:
        return PeftLoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            task_type="CAUSAL_LM",
        )


@register_method
class LoraMethod(Method):
    """LoRA adapters on the FFN projections, trained on the same SFT data as NeST, then merged."""

    name = "lora"
    config_class = LoraConfig
    config: LoraConfig

    def tune(self, context: TuneContext) -> TuneResult:
        cfg = self.config
        peft_model = attach_lora(context.model, cfg.peft_config())
        trainable = count_trainable(peft_model.parameters())
        logger.info("LoRA rank %d on %s: %d trainable parameters", cfg.rank, ", ".join(cfg.target_modules), trainable)
        try:
            stats = train_sft(
                peft_model, context.tokenizer, context.data.examples(), peft_model.parameters(),
                cfg.train_settings(context),
            )
        except BaseException:
            discard(peft_model)
            raise
        modified = adapted_weight_names(peft_model)
        adapter_dir = context.work_dir / "adapter"
        model = save_and_merge(peft_model, adapter_dir)
        return TuneResult(
            model=model,
            trainable_parameters=trainable,
            report={"best_val_loss": stats.best_val_loss, "best_epoch": stats.best_epoch, "steps": stats.steps,
                    "training_seconds": stats.seconds, "adapted_modules": len(modified)},
            artifacts={"adapter": str(adapter_dir)},
            loss_curve=stats.loss_curve,
            modified_parameters=modified,
        )
