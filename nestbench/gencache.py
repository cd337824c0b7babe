"""Location and key of lm-eval's response cache, so that no evaluation request runs twice.

Evaluation passes ``use_cache`` to ``lm_eval.simple_evaluate``, whose ``CachingLM`` stores
each response in a SQLite file under the SHA-256 of the request type and arguments. For a
generation those arguments are the full prompt (chat template, system message and attack
applied) and the generation settings (``max_gen_toks``, ``until``, ``do_sample``), and for
a log-likelihood request the context and continuation. The judge is not part of the key,
so scoring cached responses with another judge generates nothing.

The request key does not cover the model, so each model gets its own files, named by a
hash of its weights (not of the base model's file), its tokenizer's vocabulary, dtype,
device type and the torch and transformers versions. Results for the ``none`` row are shared by every run of the same
base model, and a tuned model's results by every resume of its run.

The files live in ``<results-dir>/runs/generation-cache/`` because they contain harmful
text generated under attack, which nestbench keeps under ``results/runs/`` only. Delete the
folder to clear the cache.

NOTE: the batch size is not part of the key. A response generated in another batch (with
other padding) can differ in rare tokens, so a resumed evaluation may mix both.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import metadata
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CACHE_DIR_NAME = "generation-cache"
# Part of every key; bump it when the cached values change meaning.
CACHE_FORMAT = 1


def weights_hash(model: torch.nn.Module) -> str:
    """Return the SHA-256 of every tensor in ``model.state_dict()``: names, dtypes, shapes and bytes.

    NOTE: this reads every weight once on the CPU. SmolLM2-135M in float32 (540 MB) took about
    2 s on a shared 2-core CPU, so a model of several GB adds tens of seconds per evaluation.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}\n".encode())
        # uint8 view, because numpy has no bfloat16 and the hash is over raw bytes anyway.
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def vocabulary_hash(tokenizer) -> str:
    """Return the SHA-256 of the tokenizer's token-to-id map, which fixes how a prompt is encoded."""
    vocabulary = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocabulary, ensure_ascii=False).encode()).hexdigest()


def generation_cache_prefix(results_dir: Path, model: torch.nn.Module, tokenizer) -> Path:
    """Return the path prefix of ``model``'s cache files, creating their folder with owner-only access.

    lm-eval appends ``_rank0.db`` to the prefix; evaluation adds ``-safety`` or ``-utility``
    first, so the two ``simple_evaluate`` calls never share one SQLite file.
    """
    parameter = next(model.parameters())
    key_parts = [
        f"format={CACHE_FORMAT}",
        f"weights={weights_hash(model)}",
        f"vocabulary={vocabulary_hash(tokenizer)}",
        f"dtype={parameter.dtype}",
        f"device={parameter.device.type}",
        f"torch={torch.__version__}",
        f"transformers={metadata.version('transformers')}",
    ]
    key = hashlib.sha256("\n".join(key_parts).encode()).hexdigest()[:32]
    folder = results_dir / "runs" / CACHE_DIR_NAME
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    logger.info("response cache for this model: %s-*", folder / key)
    return folder / key
