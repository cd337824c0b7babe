"""Tuning methods. Importing this package registers every built-in method in ``METHODS``."""

from nestbench.methods.base import (
    METHODS,
    Method,
    MethodConfig,
    TuneContext,
    TuneResult,
    build_method,
    load_method_config,
    register_method,
)
from nestbench.methods import circuit_breakers as _circuit_breakers  # noqa: F401  (registers "circuit-breakers")
from nestbench.methods import full as _full  # noqa: F401  (registers "full")
from nestbench.methods import lora as _lora  # noqa: F401  (registers "lora")
from nestbench.methods import nest as _nest  # noqa: F401  (registers "nest")
from nestbench.methods import none as _none  # noqa: F401  (registers "none")

__all__ = [
    "METHODS",
    "Method",
    "MethodConfig",
    "TuneContext",
    "TuneResult",
    "build_method",
    "load_method_config",
    "register_method",
]
