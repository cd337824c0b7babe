"""Time each attack's safety evaluation on one model, as a ratio to the vanilla attack.

Every attack runs through ``nestbench.evaluation.evaluate_model`` on its own, over the same
first N HarmBench requests, so the wall time per prompt and the ratio to vanilla show what
an attack adds to a run. A long template costs prompt tokens, while the generation length
is fixed by --max-gen-toks. Fixed-prompt attacks (tap, past_tense, future_tense) send their
own prompts.

    OMP_NUM_THREADS=2 \\
        python bench/attack_time.py --prompts 4 --attacks vanilla,dan,rot13
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import add_common_arguments, load, machine_description, positive_int, print_table, setup


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from nestbench.attacks import offline_attacks

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--prompts", type=positive_int, default=4, help="HarmBench requests per attack (default: 4)")
    parser.add_argument(
        "--attacks", default=",".join(offline_attacks()), help="comma-separated attacks (default: every offline attack)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=32, help="prompts per batch (default: 32)")
    parser.add_argument("--max-gen-toks", type=positive_int, default=48, help="new tokens per prompt (default: 48)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from nestbench.attacks import ATTACKS
    from nestbench.evaluation import EvalSettings, evaluate_model
    from nestbench.prompts import load_prompt_set
    from nestbench.sft import chat_prompt

    args = parse_args(argv)
    setup(args)
    loaded = load(args)
    requests = list(load_prompt_set("harmbench").prompts[: args.prompts])
    timed = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.attacks.split(","):
            prompts = ATTACKS.get(name).build(requests)
            settings = EvalSettings(
                attacks=(name,), utility_tasks=(), over_refusal_set=None, max_gen_toks=args.max_gen_toks,
                batch_size=args.batch_size,
            )
            start = time.perf_counter()
            evaluate_model(loaded.model, loaded.tokenizer, requests, settings, Path(work))
            seconds = time.perf_counter() - start
            lengths = [len(loaded.tokenizer(chat_prompt(loaded.tokenizer, p), add_special_tokens=False)["input_ids"])
                       for p in prompts]
            timed.append((name, len(prompts), sum(lengths) / len(lengths), seconds))

    vanilla = next((seconds / n for name, n, _, seconds in timed if name == "vanilla"), None)
    rows = [
        {
            "attack": name,
            "prompts": n,
            "mean prompt tokens": f"{tokens:.0f}",
            "wall (s)": f"{seconds:.1f}",
            "s per prompt": f"{seconds / n:.2f}",
            "vs vanilla": f"{seconds / n / vanilla:.2f}" if vanilla else "–",
        }
        for name, n, tokens, seconds in timed
    ]
    print(f"machine: {machine_description()}")
    print(f"model: {args.model}; first {len(requests)} HarmBench requests, up to {args.max_gen_toks} new tokens, greedy")
    print_table(rows, list(rows[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
