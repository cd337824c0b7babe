"""Tests for nestbench.models: spec resolution, GGUF conversion and its cache, and load errors."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import socket
import time
from pathlib import Path

import gguf
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from nestbench import models
from nestbench.assets import SMOLLM2, SMOLLM2_GGUF
from nestbench.errors import AssetNotFoundError, ConfigError, ModelLoadError
from nestbench.models import (
    CACHE_MARKER,
    DEFAULT_MODEL,
    cache_root,
    load_model,
    resolve_device,
    resolve_dtype,
    sha256_file,
)

PROMPT = [{"role": "user", "content": "How do I bake bread at home?"}]


LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


def block_remote_lookup(host, *args, **kwargs):
    if host in LOOPBACK_HOSTS:
        return REAL_GETADDRINFO(host, *args, **kwargs)
    raise OSError(f"network lookup of {host!r} blocked because tests must stay offline")


REAL_GETADDRINFO = socket.getaddrinfo


@pytest.fixture(autouse=True)
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every test off the network and out of the user's nestbench cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_OFFLINE once at import. Unless the constant is set, version 2.4
    # fetches an agent registry from the hub for its User-Agent header, even for cached files.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket, "getaddrinfo", block_remote_lookup)
    cache = tmp_path / "nestbench-cache"
    monkeypatch.setenv("NESTBENCH_CACHE", str(cache))
    return cache


def prompt_logits(model: PreTrainedModel, tokenizer) -> torch.Tensor:
    batch = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        return model(**batch).logits


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Writing a GGUF file for the tiny model


def permute_for_gguf(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder q/k rows from the Hugging Face rotary layout to llama.cpp's interleaved layout."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def gguf_tensor_name(name: str) -> str:
    """Map a LlamaForCausalLM parameter name to its llama.cpp GGUF tensor name."""
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if name in fixed:
        return fixed[name]
    parts = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    _, _, layer, rest = name.split(".", 3)
    module = rest.removesuffix(".weight")
    return f"blk.{layer}.{parts[module]}.weight"


def write_tiny_gguf(model: PreTrainedModel, tokenizer, path: Path) -> Path:
    """Write the tiny model and its byte-level BPE tokenizer as an unquantised llama GGUF file."""
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)

    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special_ids = set(tokenizer.all_special_ids)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if index in special_ids else gguf.TokenType.NORMAL for index in range(len(tokens))]
    )
    writer.add_token_merges([" ".join(pair) for pair in merges])
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)

    for name, tensor in model.state_dict().items():
        array = tensor.detach().to(torch.float32).numpy()
        if ".self_attn.q_proj." in name:
            array = permute_for_gguf(array, config.num_attention_heads)
        elif ".self_attn.k_proj." in name:
            array = permute_for_gguf(array, config.num_key_value_heads)
        writer.add_tensor(gguf_tensor_name(name), np.ascontiguousarray(array))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path: Path, tiny_llama) -> Path:
    return write_tiny_gguf(tiny_llama.model, tiny_llama.tokenizer, tmp_path / "tiny-llama.gguf")


# cache_root and sha256_file


def test_cache_root_reads_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NESTBENCH_CACHE", str(tmp_path / "elsewhere"))
    assert cache_root() == tmp_path / "elsewhere"


def test_cache_root_default_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NESTBENCH_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "nestbench"


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    data = bytes(range(256)) * 9000  # larger than one 1 MiB chunk
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


# resolve_device and resolve_dtype


def test_resolve_device_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


def test_resolve_device_auto_without_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_resolve_device_cuda_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as caught:
        resolve_device("cuda")
    assert "'cuda'" in str(caught.value)
    assert "--device cpu" in str(caught.value)
    assert "--device auto" in str(caught.value)


def test_resolve_device_cuda_index_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="cuda:3"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


def test_resolve_device_unknown_name() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_device("tpu")
    assert "'tpu'" in str(caught.value)
    assert "auto, cpu, cuda" in str(caught.value)


def test_resolve_dtype_names() -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("float32", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16


def test_resolve_dtype_auto_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto", "cuda") == torch.float16
    with pytest.raises(ConfigError, match="float16"):
        resolve_dtype("bfloat16", "cuda")


def test_resolve_dtype_unknown_lists_choices() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_dtype("int4", "cpu")
    assert "'int4'" in str(caught.value)
    assert "auto, float32, bfloat16, float16" in str(caught.value)


def test_load_model_rejects_unknown_dtype(tiny_llama_dir: Path) -> None:
    with pytest.raises(ConfigError, match="fp8"):
        load_model(str(tiny_llama_dir), device="cpu", dtype="fp8")


# Local folders


def test_local_folder_loads(tiny_llama, tiny_llama_dir: Path) -> None:
    loaded = load_model(str(tiny_llama_dir), device="cpu", dtype="float32")

    assert loaded.source == "local"
    assert loaded.spec == str(tiny_llama_dir)
    assert loaded.model_hash == sha256_file(tiny_llama_dir / "model.safetensors")
    assert loaded.chat_template_hash == sha256_text(tiny_llama.tokenizer.chat_template)
    assert loaded.device == torch.device("cpu")
    assert loaded.dtype == torch.float32
    assert isinstance(loaded.model, PreTrainedModel)
    assert not loaded.model.training
    assert getattr(loaded.model.config, "quantization_config", None) is None
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.tokenizer.pad_token == "<|pad|>"
    torch.testing.assert_close(
        prompt_logits(loaded.model, loaded.tokenizer), prompt_logits(tiny_llama.model, tiny_llama.tokenizer)
    )


def test_local_folder_casts_dtype(tiny_llama_dir: Path) -> None:
    loaded = load_model(str(tiny_llama_dir), device="cpu", dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    assert loaded.model.dtype == torch.bfloat16
    assert all(parameter.dtype == torch.bfloat16 for parameter in loaded.model.parameters())
    assert loaded.model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_missing_pad_token_uses_eos(tmp_path: Path, tiny_llama) -> None:
    folder = tmp_path / "no-pad"
    tiny_llama.model.save_pretrained(folder)
    tiny_llama.tokenizer.pad_token = None
    tiny_llama.tokenizer.save_pretrained(folder)

    loaded = load_model(str(folder), device="cpu")
    assert loaded.tokenizer.pad_token == "<|im_end|>"
    assert loaded.tokenizer.pad_token_id == loaded.tokenizer.eos_token_id


def test_missing_chat_template_hashes_empty(tmp_path: Path, tiny_llama) -> None:
    folder = tmp_path / "no-template"
    tiny_llama.model.save_pretrained(folder)
    tiny_llama.tokenizer.chat_template = None
    tiny_llama.tokenizer.save_pretrained(folder)

    loaded = load_model(str(folder), device="cpu")
    assert loaded.chat_template_hash == sha256_text("")


def test_folder_without_config_json(tiny_llama_dir: Path) -> None:
    (tiny_llama_dir / "config.json").unlink()
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(tiny_llama_dir), device="cpu")
    assert str(tiny_llama_dir) in str(caught.value)
    assert "config.json" in str(caught.value)


def test_folder_without_weights(tiny_llama_dir: Path) -> None:
    (tiny_llama_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weight files"):
        load_model(str(tiny_llama_dir), device="cpu")


def test_truncated_safetensors(tiny_llama_dir: Path) -> None:
    weights = tiny_llama_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])

    with pytest.raises(ModelLoadError) as caught:
        load_model(str(tiny_llama_dir), device="cpu")
    assert str(weights) in str(caught.value)
    assert "truncated or corrupt" in str(caught.value)


# Spec resolution


@pytest.mark.parametrize("spec", ["./no-such-model", "/no/such/model", "~/no-such-model", "a/b/c"])
def test_missing_path_not_found(spec: str) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load_model(spec, device="cpu")
    assert "not found" in str(caught.value)
    assert repr(spec) in str(caught.value)


def test_gguf_path_not_found(tmp_path: Path) -> None:
    spec = str(tmp_path / "missing.gguf")
    with pytest.raises(ModelLoadError) as caught:
        load_model(spec, device="cpu")
    assert "model file not found" in str(caught.value)
    assert spec in str(caught.value)


def test_plain_file_rejected(tiny_llama_dir: Path) -> None:
    spec = str(tiny_llama_dir / "config.json")
    with pytest.raises(ModelLoadError, match="only .gguf files"):
        load_model(spec, device="cpu")


def test_hub_id_offline(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load_model("acme/not-downloaded", device="cpu", cache_dir=tmp_path / "hf")
    message = str(caught.value)
    assert "'acme/not-downloaded'" in message
    assert "HF_HUB_OFFLINE" in message
    assert "local model folder" in message
    assert ".gguf file" in message
    assert DEFAULT_MODEL in message


def test_hub_id_from_local_cache(tmp_path: Path, tiny_llama) -> None:
    """Load a hub id from a Hugging Face cache snapshot, as an offline machine would."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--acme--tiny"
    snapshot = repo / "snapshots" / commit
    tiny_llama.model.save_pretrained(snapshot)
    tiny_llama.tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    loaded = load_model("acme/tiny", device="cpu", cache_dir=tmp_path / "hf")
    assert loaded.source == "hub"
    assert loaded.model_hash == f"hub:acme/tiny@{commit}"
    assert loaded.tokenizer.padding_side == "left"


def test_trust_remote_code_off_by_default(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False

    seen: list[object] = []
    original = AutoModelForCausalLM.from_pretrained

    def recording_from_pretrained(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return original(*args, **kwargs)

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", recording_from_pretrained)
    load_model(str(tiny_llama_dir), device="cpu")
    assert seen == [False]


def test_trust_remote_code_warns(tiny_llama_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nestbench.models"):
        load_model(str(tiny_llama_dir), device="cpu", trust_remote_code=True)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("trust_remote_code" in text and str(tiny_llama_dir) in text for text in warnings)


# GGUF files


def test_truncated_gguf(tmp_path: Path, offline_cache: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GG")
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(path), device="cpu")
    assert str(path) in str(caught.value)
    assert "download it again" in str(caught.value)


def test_gguf_truncated_after_header(tiny_gguf: Path, offline_cache: Path) -> None:
    data = tiny_gguf.read_bytes()
    tiny_gguf.write_bytes(data[: len(data) - 500])

    with pytest.raises(ModelLoadError) as caught:
        load_model(str(tiny_gguf), device="cpu")
    assert str(tiny_gguf) in str(caught.value)
    assert "download it again" in str(caught.value)
    assert list((offline_cache / "gguf").iterdir()) == []


def test_gguf_round_trip(tiny_gguf: Path, tiny_llama, offline_cache: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="nestbench.models"):
        first = load_model(str(tiny_gguf), device="cpu", dtype="float32")
    digest = sha256_file(tiny_gguf)

    assert first.source == "gguf"
    assert first.model_hash == digest
    assert first.chat_template_hash == sha256_text(tiny_llama.tokenizer.chat_template)
    assert getattr(first.model.config, "quantization_config", None) is None
    assert getattr(first.model, "hf_quantizer", None) is None
    assert not first.model.training
    assert any("converting GGUF" in record.getMessage() for record in caplog.records)
    assert [entry.name for entry in (offline_cache / "gguf").iterdir()] == [digest]
    assert (offline_cache / "gguf" / digest / CACHE_MARKER).is_file()

    expected = prompt_logits(tiny_llama.model, tiny_llama.tokenizer)
    torch.testing.assert_close(prompt_logits(first.model, first.tokenizer), expected)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nestbench.models"):
        second = load_model(str(tiny_gguf), device="cpu", dtype="float32")
    assert any("from cache" in record.getMessage() for record in caplog.records)
    assert second.model_hash == digest
    torch.testing.assert_close(prompt_logits(second.model, second.tokenizer), expected)


def test_gguf_failed_conversion_leaves_no_cache(
    tiny_gguf: Path, offline_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(model):
        raise RuntimeError("simulated crash during conversion")

    monkeypatch.setattr(models, "_dequantised_copy", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        load_model(str(tiny_gguf), device="cpu")
    assert list((offline_cache / "gguf").iterdir()) == []


def test_publish_keeps_existing_conversion(tmp_path: Path) -> None:
    """A second process that finishes converting later discards its copy and keeps the first."""
    folder = tmp_path / "gguf" / "digest"
    folder.mkdir(parents=True)
    (folder / CACHE_MARKER).write_text(json.dumps({"format": models.CACHE_FORMAT}))
    staging = tmp_path / "gguf" / ".digest.tmp"
    staging.mkdir()
    (staging / "config.json").write_text("{}")

    models._publish(staging, folder)
    assert not (folder / "config.json").exists()


# The built-in SmolLM2 model


@pytest.mark.integration
def test_alias_converts_then_reads_cache(offline_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    try:
        asset = models.asset_path(SMOLLM2, SMOLLM2_GGUF)
    except AssetNotFoundError as exc:
        pytest.skip(str(exc))

    started = time.perf_counter()
    first = load_model(DEFAULT_MODEL, device="cpu", dtype="float32")
    first_seconds = time.perf_counter() - started
    caplog.clear()
    started = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="nestbench.models"):
        second = load_model(DEFAULT_MODEL, device="cpu", dtype="float32")
    second_seconds = time.perf_counter() - started

    assert any("from cache" in record.getMessage() for record in caplog.records)
    assert second_seconds < first_seconds

    assert first.source == "alias"
    assert first.model_hash == sha256_file(asset)
    assert (offline_cache / "gguf" / first.model_hash / CACHE_MARKER).is_file()
    assert getattr(second.model.config, "quantization_config", None) is None
    assert second.tokenizer.chat_template
    assert second.tokenizer.padding_side == "left"
    assert second.tokenizer.pad_token is not None
    assert first.chat_template_hash == second.chat_template_hash
    torch.testing.assert_close(
        prompt_logits(first.model, first.tokenizer), prompt_logits(second.model, second.tokenizer), rtol=0, atol=0
    )
