"""Run profiles: how much data, how many epochs and how many new tokens a run uses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from nestbench.errors import ConfigError
from nestbench.registry import Registry


@dataclass(frozen=True)
class Profile:
    """Run-level sizes shared by every method, so methods differ only in their own recipe."""

    name: str
    train_harmful: int | None  # harmful prompts for probing and training; None = the whole set
    train_benign: int | None  # benign prompts; None = as many as harmful ones
    eval_harmful: int | None  # harmful evaluation prompts for the vanilla task; None = all
    attack_prompts: int | None  # harmful evaluation prompts per jailbreak attack; None = all
    utility_limit: int | None  # items per utility task; None = all (a set limit marks the run as limited)
    max_new_tokens: int  # generation length when scoring safety
    answer_tokens: int  # length of the base model's own answers used as benign targets
    epochs: int
    batch_size: int  # training batch size
    eval_batch_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROFILES: Registry[Profile] = Registry("profile")

# Small enough for a 2-core CPU in minutes; recorded as quick and kept out of leaderboards
# unless asked for.
PROFILES.add(
    "quick",
    Profile(
        name="quick",
        train_harmful=200,
        train_benign=200,
        eval_harmful=None,
        attack_prompts=24,
        utility_limit=None,
        max_new_tokens=48,
        answer_tokens=64,
        epochs=3,
        batch_size=8,
        eval_batch_size=32,
    ),
)
# Paper scale: every prompt, 5 epochs, HarmBench's 512 new tokens.
PROFILES.add(
    "full",
    Profile(
        name="full",
        train_harmful=None,
        train_benign=None,
        eval_harmful=None,
        attack_prompts=None,
        utility_limit=None,
        max_new_tokens=512,
        answer_tokens=256,
        epochs=5,
        batch_size=8,
        eval_batch_size=16,
    ),
)


def resolve_profile(name: str, **overrides: Any) -> Profile:
    """Return the named profile with the non-None overrides applied and checked."""
    profile = PROFILES.get(name)
    changes = {k: v for k, v in overrides.items() if v is not None}
    for key, value in changes.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"invalid {key.replace('_', '-')} {value!r}: must be a whole number >= 1")
    return replace(profile, **changes)
