"""The lm-eval model that generates and scores: the in-memory Hugging Face model, or vLLM.

``hf`` wraps the model in memory in lm-eval's ``HFLM``. ``vllm`` hands a model folder to
lm-eval's ``VLLM`` backend, which loads its own copy of the weights into vLLM's engine, so
the tuned model must be saved first. When vLLM is not installed the run falls back to
``hf`` with a warning and records the backend it really used.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from nestbench.errors import ConfigError

logger = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(requested: str) -> str:
    """Return the backend a run uses: ``requested``, or ``hf`` when vLLM is requested but missing."""
    if requested not in BACKENDS:
        raise ConfigError(f"unknown backend {requested!r}; use one of {', '.join(BACKENDS)}")
    if requested == "vllm" and not vllm_available():
        logger.warning(
            "--backend vllm requested, but vLLM is not installed, so generation falls back to the Hugging Face "
            "backend (hf). Install vLLM on a CUDA machine (pip install vllm) to generate with it"
        )
        return "hf"
    return requested


def make_vllm_lm(model_folder: str, batch_size: int, dtype: str, seed: int, **extra: Any) -> Any:
    """Build lm-eval's ``VLLM`` model on a saved model folder or hub id.

    Greedy decoding is set per task by nestbench, so vLLM's own sampling defaults do not matter.
    """
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM(pretrained=str(model_folder), batch_size=batch_size, dtype=dtype, seed=seed, **extra)


def vllm_model_folder(record: dict[str, Any], loaded: Any, model: Any, folder: Path) -> str:
    """Return a folder or hub id that vLLM can load for the model being evaluated.

    A tuned model was saved as the run's ``model`` artifact. The untouched model is loaded
    from where it came from, except a GGUF file or alias, which is saved into the run folder.
    """
    saved = record.get("artifacts", {}).get("model")
    if saved:
        return saved
    if loaded.source in ("local", "hub"):
        return loaded.spec
    target = folder / "model"
    model.save_pretrained(target, safe_serialization=True)
    loaded.tokenizer.save_pretrained(target)
    return str(target)
