"""PEFT LoRA adapters shared by the ``lora`` and ``circuit-breakers`` methods."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from nestbench.errors import ConfigError

logger = logging.getLogger(__name__)


def attach_lora(model: torch.nn.Module, lora_config: LoraConfig) -> PeftModel:
    """Wrap ``model`` with fresh LoRA adapters; PEFT freezes every base weight.

    A target module name that matches nothing raises a ConfigError that lists the
    model's linear layer names.
    """
    try:
        return get_peft_model(model, lora_config)
    except ValueError as err:
        if "not found in the base model" not in str(err):
            raise
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(
            f"LoRA target modules {sorted(lora_config.target_modules)} not found in {type(model).__name__}; "
            f"its linear layers are named {', '.join(linear)}"
        ) from err


def adapted_weight_names(peft_model: PeftModel) -> tuple[str, ...]:
    """Return the base-model names of the weights that the adapters change once merged."""
    base = peft_model.get_base_model()
    return tuple(f"{name}.weight" for name, module in base.named_modules() if isinstance(module, LoraLayer))



def save_and_merge(peft_model: PeftModel, adapter_dir: Path) -> torch.nn.Module:
    """Save the adapter (loadable with ``PeftModel.from_pretrained``), then merge it into the weights.

    Returns the plain base model with the merged weights and every parameter trainable
    again, as before tuning.
    """
    peft_model.save_pretrained(adapter_dir)
    model = peft_model.merge_and_unload()
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def discard(peft_model: PeftModel) -> torch.nn.Module:
    """Remove the adapters without merging, so a failed method leaves the base model as it was."""
    model = peft_model.unload()
    for param in model.parameters():
        param.requires_grad_(True)
    return model
