"""Shared fixtures: a tiny random Llama chat model built offline, with no asset or download."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TINY_SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]

# ChatML, the format SmolLM2-Instruct uses, so prompt code gets the same role markers.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TINY_CORPUS = [
    "How do I bake bread at home?",
    "I cannot help with that request because it could cause harm.",
    "Sure, here is a simple recipe with flour, water, salt and yeast.",
    "Explain how a bicycle gear works in two sentences.",
    "The user asked a question and the assistant answered it politely.",
    "Sorry, but I can't assist with making weapons or hurting people.",
]


class TinyLlama(NamedTuple):
    """A random two-layer Llama model and its byte-level BPE chat tokenizer."""

    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerFast


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on a few sentences in memory.

    Byte-level BPE encodes any text without unknown tokens, and its ids 0-2 are the pad,
    ``<|im_start|>`` and ``<|im_end|>`` tokens, in that order.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TINY_CORPUS, trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
        padding_side="left",
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny_llama(seed: int = 0) -> TinyLlama:
    """Build a seeded random Llama model whose vocabulary matches the tiny tokenizer."""
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    return TinyLlama(model, tokenizer)


@pytest.fixture
def tiny_llama() -> TinyLlama:
    """Return a fresh tiny model and tokenizer, which a test may change freely."""
    return build_tiny_llama()


@pytest.fixture
def tiny_llama_dir(tmp_path: Path, tiny_llama: TinyLlama) -> Path:
    """Save the tiny model and tokenizer to a folder that ``from_pretrained`` can load."""
    folder = tmp_path / "tiny-llama"
    tiny_llama.model.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    """Leave offline mode and point the Hugging Face Hub at a loopback port that nothing listens on.

    Proxy variables are removed, because a proxy would skip the direct connection check. The Hub
    cache moves to an empty folder in ``tmp_path``. Returns the port.
    """
    import datasets
    import huggingface_hub.constants

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return port
