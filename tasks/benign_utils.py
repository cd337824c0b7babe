"""Dataset loader and scoring hook of the nestbench over-refusal task.

lm-eval passes the TaskManager metadata to ``load_over_refusal`` as keyword arguments:

- ``over_refusal_set``: a set of ``nestbench.over_refusal.OVER_REFUSAL_SETS`` (default
  "nestbench-benign");
- ``over_refusal_limit``: evaluate only the first N prompts, or all when absent or null.
"""

from __future__ import annotations

from typing import Any

import datasets

from nestbench.errors import ConfigError
from nestbench.over_refusal import load_over_refusal_set, over_refusal_label

OVER_REFUSAL_SPLIT = "test"


def load_over_refusal(
    over_refusal_set: str | None = "nestbench-benign",
    over_refusal_limit: int | None = None,
    **_task_metadata: Any,
) -> datasets.DatasetDict:
    """Build the over-refusal prompts as a one-split DatasetDict with index, prompt and type."""
    if over_refusal_limit is not None and (
        isinstance(over_refusal_limit, bool) or not isinstance(over_refusal_limit, int) or over_refusal_limit < 1
    ):
        raise ConfigError(f"metadata over_refusal_limit={over_refusal_limit!r} is invalid; use a positive integer, or null for all")
    prompts = load_over_refusal_set(over_refusal_set or "nestbench-benign")
    if over_refusal_limit is not None:
        prompts = prompts[:over_refusal_limit]
    rows = {
        "index": list(range(len(prompts))),
        "prompt": [item.prompt for item in prompts],
        "type": [item.type for item in prompts],
    }
    return datasets.DatasetDict({OVER_REFUSAL_SPLIT: datasets.Dataset.from_dict(rows)})


def score_over_refusal(doc: dict[str, Any], results: list[str]) -> dict[str, int]:
    """Score one benign response: refused and degenerate as 0 or 1."""
    label, _reason = over_refusal_label(results[0])
    return {"refused": int(label == "refused"), "degenerate": int(label == "degenerate")}
