"""The ``none`` method: the model as loaded, the reference row of every comparison."""

from __future__ import annotations

from dataclasses import dataclass

from nestbench.methods.base import Method, MethodConfig, TuneContext, TuneResult, register_method


@dataclass
class NoneConfig(MethodConfig):
    """``none`` has no settings; the dataclass exists so every method loads a recipe the same way."""


@register_method
class NoneMethod(Method):
    """The untouched model, evaluated as the reference row."""

    name = "none"
    config_class = NoneConfig
    needs_sft_data = False

    def tune(self, context: TuneContext) -> TuneResult:
        return TuneResult(model=context.model, trainable_parameters=0, report={"changed": False})
