"""The interface every tuning method implements, and the method registry."""

from __future__ import annotations

import abc
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from nestbench.config import build_config, read_recipe
from nestbench.errors import ConfigError
from nestbench.registry import Registry
from nestbench.resources import recipes_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from nestbench.sft import TrainingData

logger = logging.getLogger(__name__)


@dataclass
class MethodConfig:
    """Base class of every method's config dataclass; subclasses add fields with defaults."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TuneContext:
    """Everything a method needs to tune one model; the runner builds it once per method."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    data: TrainingData
    work_dir: Path
    seed: int
    epochs: int
    batch_size: int


@dataclass
class TuneResult:
    """Result of ``Method.tune``: a plain model for evaluation and the method's own report."""

    model: PreTrainedModel
    trainable_parameters: int
    report: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    loss_curve: list[dict[str, float]] = field(default_factory=list)
    # Names of the exported model's parameters that tuning may have changed; every other
    # parameter keeps its base value.
    modified_parameters: tuple[str, ...] = ()


class Method(abc.ABC):
    """A safety tuning method: configured by a dataclass, run by ``tune``.

    ``tune`` may modify ``context.model`` in place, and must return a plain
    ``PreTrainedModel`` with the base architecture (no hooks, adapters or wrappers), so
    evaluation has exactly one path for every method.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]
    # Methods that train on the shared SFT data set this, so the runner builds it (which
    # needs the untouched base model) before any method changes the model.
    needs_sft_data: ClassVar[bool] = True

    def __init__(self, config: MethodConfig):
        self.config = config

    @abc.abstractmethod
    def tune(self, context: TuneContext) -> TuneResult:
        """Tune ``context.model`` and return the exported plain model with its report."""


METHODS: Registry[type[Method]] = Registry("method")


def register_method(cls: type[Method]) -> type[Method]:
    METHODS.add(cls.name, cls)
    return cls


def recipe_path(name: str) -> Path:
    return recipes_dir() / f"{name}.yaml"


def load_method_config(name: str, overrides: dict[str, Any] | None = None) -> MethodConfig:
    """Build a method's config: dataclass defaults, then ``methods/<name>.yaml``, then overrides."""
    method_cls = METHODS.get(name)
    path = recipe_path(name)
    if not path.is_file():
        raise ConfigError(f"recipe for method {name!r} not found at {path}; every method needs one")
    values = read_recipe(path)
    # The recipe alone is checked first, so a problem in the file is never blamed on --set.
    config = build_config(method_cls.config_class, values, f"recipe {path}")
    if not overrides:
        return config
    settings = ", ".join(f"--set {key}={value}" for key, value in overrides.items())
    return build_config(method_cls.config_class, {**values, **overrides}, f"{settings} (method {name!r}, recipe {path})")


def build_method(name: str, overrides: dict[str, Any] | None = None) -> Method:
    config = load_method_config(name, overrides)
    logger.info("method %s config: %s", name, config.to_dict())
    return METHODS.get(name)(config)


def count_trainable(params) -> int:
    return sum(p.numel() for p in params if p.requires_grad)
