"""Estimate GPU memory per method for 1B, 8B and 14B chat models from their parameter counts.

These are estimates from formulas, not measurements. They print the table in docs/scaling.md:

    python docs/memory_estimates.py

Assumptions, all stated so that a reader can redo the arithmetic:
- weights in bfloat16 (2 bytes per parameter); trainable parameters in float32 with AdamW
  (4 bytes weight + 4 gradient + 8 for the two moments = 16 bytes per trainable parameter);
- activations kept for the backward pass, per token and layer, 2 bytes × (12 × d_model + 4 × d_ff)
  (attention inputs and outputs, the norms, and the SwiGLU gate, up, activation and product),
  with fused attention (no stored score matrix) and no activation checkpointing;
- the loss upcasts the logits to float32, and the backward pass keeps their gradient too:
  2 × batch × sequence × vocabulary × 4 bytes;
- training batches of 8 examples of 256 tokens (NeST's defaults ``batch_size`` and ``max_length``);
- evaluation batches of 32 sequences of 1,600 tokens (a DAN prompt of about 1,000 tokens plus
  512 new tokens in the full profile), so the KV cache is 2 × layers × KV heads × head size
  × 2 bytes per token;
- NeST's probing step keeps max-pooled gate_proj and up_proj outputs of every prompt in float32:
  prompts × 2 × layers × d_ff × 4 bytes, for 2,000 prompts (the order of the full profile);
- NeST trains k_max = 2 update vectors of size d_model per (layer, projection);
- LoRA of rank 16 on the q, k, v, o, gate, up and down projections;
- full fine-tuning keeps bf16 weights and gradients and float32 master weights and moments
  (16 bytes per parameter), and FSDP over N GPUs divides that by N.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class Architecture:
    name: str
    parameters: float
    layers: int
    d_model: int
    d_ff: int
    kv_heads: int
    head_dim: int
    vocab: int


# Values from the models' published config.json files.
MODELS = (
    Architecture("Llama-3.2-1B-Instruct", 1.236e9, 16, 2048, 8192, 8, 64, 128_256),
    Architecture("Llama-3.1-8B-Instruct", 8.030e9, 32, 4096, 14336, 8, 128, 128_256),
    Architecture("Qwen2.5-14B-Instruct", 14.77e9, 48, 5120, 13824, 8, 128, 152_064),
)

TRAIN_BATCH, TRAIN_TOKENS = 8, 256
EVAL_BATCH, EVAL_TOKENS = 32, 1600
PROBE_PROMPTS = 2000
LORA_RANK = 16
FSDP_GPUS = 8


def weights(m: Architecture) -> float:
    return 2 * m.parameters


def activations(m: Architecture) -> float:
    tokens = TRAIN_BATCH * TRAIN_TOKENS
    per_layer = 2 * (12 * m.d_model + 4 * m.d_ff)
    logits = 2 * tokens * m.vocab * 4
    return tokens * m.layers * per_layer + logits


def kv_cache(m: Architecture) -> float:
    return EVAL_BATCH * EVAL_TOKENS * 2 * m.layers * m.kv_heads * m.head_dim * 2


def nest_trainable(m: Architecture) -> int:
    return 2 * 2 * m.layers * m.d_model


def lora_trainable(m: Architecture) -> int:
    kv = m.kv_heads * m.head_dim
    shapes = [(m.d_model, m.d_model), (m.d_model, kv), (m.d_model, kv), (m.d_model, m.d_model),
              (m.d_model, m.d_ff), (m.d_model, m.d_ff), (m.d_ff, m.d_model)]
    return m.layers * sum(LORA_RANK * (fan_in + fan_out) for fan_in, fan_out in shapes)


def estimates(m: Architecture) -> dict[str, float]:
    probe = PROBE_PROMPTS * 2 * m.layers * m.d_ff * 4
    return {
        "weights (bf16)": weights(m),
        "none: evaluation": weights(m) + kv_cache(m),
        "nest: probing": weights(m) + probe,
        "nest: training": weights(m) + 16 * nest_trainable(m) + activations(m),
        "lora: training": weights(m) + 16 * lora_trainable(m) + activations(m),
        "full fine-tuning, 1 GPU": 16 * m.parameters + activations(m),
        f"full fine-tuning, FSDP on {FSDP_GPUS} GPUs (per GPU)": 16 * m.parameters / FSDP_GPUS + activations(m),
    }


def main() -> None:
    table = {m.name: estimates(m) for m in MODELS}
    rows = list(next(iter(table.values())))
    print("| estimate (GiB) | " + " | ".join(table) + " |")
    print("|---|" + "---:|" * len(table))
    for row in rows:
        print(f"| {row} | " + " | ".join(f"{table[name][row] / GIB:.1f}" for name in table) + " |")
    print("| trainable parameters, nest | " + " | ".join(f"{nest_trainable(m):,}" for m in MODELS) + " |")
    print("| trainable parameters, lora | " + " | ".join(f"{lora_trainable(m):,}" for m in MODELS) + " |")


if __name__ == "__main__":
    main()
