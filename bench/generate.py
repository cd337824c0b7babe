"""Compare evaluation generation batched by length with one prompt at a time.

Both modes call lm-evaluation-harness's ``HFLM.generate_until``, which is what the harmful
tasks of ``nestbench run`` use. HFLM sorts the requests by descending token length, splits
them into batches of ``batch_size`` with left padding, and generates greedily with the KV
cache (``use_cache=True``). Prompts are HarmBench requests wrapped by an attack and put in
the chat template. Throughput is generated tokens per second, both modes in this process.

    OMP_NUM_THREADS=2 python bench/generate.py
"""

from __future__ import annotations

import argparse
import sys
import time

from common import add_common_arguments, load, machine_description, positive_int, print_table, setup


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--prompts", type=positive_int, default=64, help="HarmBench prompts to generate for (default: 64)")
    parser.add_argument("--attack", default="vanilla", help="attack that wraps each prompt (default: vanilla)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="prompts per batch in the batched mode (default: 32, the evaluation default)")
    parser.add_argument("--max-gen-toks", type=positive_int, default=48, help="new tokens per prompt (default: 48, the quick profile's)")
    return parser.parse_args(argv)


def build_requests(tokenizer, args: argparse.Namespace) -> list:
    """Build lm-eval generation requests for the sampled, attacked prompts in the chat template."""
    from lm_eval.api.instance import Instance

    from nestbench.attacks import ATTACKS
    from nestbench.prompts import load_prompt_set, sample_prompts
    from nestbench.sft import chat_prompt

    attack = ATTACKS.get(args.attack)
    requests = sample_prompts(load_prompt_set("harmbench").prompts, args.prompts, args.seed)
    gen_kwargs = {"until": [], "max_gen_toks": args.max_gen_toks, "do_sample": False}
    return [
        Instance("generate_until", doc={}, arguments=(chat_prompt(tokenizer, attack.apply(request, i)), dict(gen_kwargs)), idx=i)
        for i, request in enumerate(requests)
    ]


def main(argv: list[str] | None = None) -> int:
    from lm_eval.models.huggingface import HFLM

    args = parse_args(argv)
    setup(args)
    loaded = load(args)
    requests = build_requests(loaded.tokenizer, args)

    outputs: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    new_tokens: dict[str, int] = {}
    for mode, batch_size in (("one at a time", 1), (f"batched by length ({args.batch_size})", args.batch_size)):
        lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size)
        counter = _count_new_tokens(lm)
        start = time.perf_counter()
        outputs[mode] = lm.generate_until(requests, disable_tqdm=True)
        seconds[mode] = time.perf_counter() - start
        new_tokens[mode] = counter[0]

    rows = []
    base_mode = next(iter(outputs))
    base_rate = None
    for mode, texts in outputs.items():
        tokens = new_tokens[mode]
        rate = tokens / seconds[mode]
        base_rate = base_rate or rate
        same = sum(a == b for a, b in zip(texts, outputs[base_mode]))
        rows.append({
            "mode": mode,
            "seconds": f"{seconds[mode]:.1f}",
            "generated tokens": tokens,
            "tokens/s": f"{rate:.1f}",
            "speed-up": f"{rate / base_rate:.2f}",
            "outputs equal to one at a time": f"{same}/{len(texts)}",
        })
    prompt_tokens = [len(loaded.tokenizer(r.arguments[0], add_special_tokens=False)["input_ids"]) for r in requests]
    print(f"machine: {machine_description()}")
    print(
        f"model: {args.model}; {len(requests)} HarmBench prompts, attack {args.attack}, "
        f"{min(prompt_tokens)}-{max(prompt_tokens)} prompt tokens, up to {args.max_gen_toks} new tokens, greedy"
    )
    print_table(rows, list(rows[0]))
    return 0


def _count_new_tokens(lm) -> list[int]:
    """Wrap ``lm._model_generate`` to count the tokens each sequence generates, and return the counter.

    A sequence ends at its first end-of-sequence token, which is counted. Rows of a batch
    that finished early are padded by ``generate`` while the others continue, and that
    padding is not counted.
    """
    counter = [0]
    generate = lm._model_generate
    stops = {lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id} - {None}

    def counting_generate(context, max_length, stop, **kwargs):
        output = generate(context, max_length, stop, **kwargs)
        for row in output[:, context.shape[1] :].tolist():
            ends = [i for i, token in enumerate(row) if token in stops]
            counter[0] += ends[0] + 1 if ends else len(row)
        return output

    lm._model_generate = counting_generate
    return counter


if __name__ == "__main__":
    sys.exit(main())
