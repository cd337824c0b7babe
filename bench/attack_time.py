"""Time each attack's safety evaluation on one model, relative to the vanilla attack.

Every attack runs as its own lm-eval call over the same first N HarmBench requests, so
the wall time per prompt and the ratio to vanilla show what an attack adds to a run: a
long template costs prompt tokens, while generation length is fixed by --max-new-tokens.

    flock /tmp/nestbench-heavy.lock env OMP_NUM_THREADS=2 \\
        python bench/attack_time.py --prompts 4 --attacks vanilla,dan,rot13
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from nestbench.attacks import ATTACKS, offline_attacks
from nestbench.evaluation import EvalSettings, evaluate_model
from nestbench.models import load_model
from nestbench.prompts import load_prompt_set


def prompt_tokens(tokenizer, prompts: list[str]) -> float:
    """Return the mean token count of the prompts inside the chat template."""
    counts = [
        len(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True))
        for prompt in prompts
    ]
    return sum(counts) / len(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=4, help="HarmBench requests per attack")
    parser.add_argument("--attacks", default=",".join(offline_attacks()), help="comma-separated attack names")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    loaded = load_model(args.model)
    requests = list(load_prompt_set("harmbench").prompts[: args.prompts])
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.attacks.split(","):
            prompts = ATTACKS.get(name).build(requests)
            settings = EvalSettings(
                attacks=(name,), utility_tasks=(), max_gen_toks=args.max_new_tokens, batch_size=args.batch_size
            )
            start = time.perf_counter()
            evaluate_model(loaded.model, loaded.tokenizer, requests, settings, Path(work))
            seconds = time.perf_counter() - start
            rows.append((name, len(prompts), prompt_tokens(loaded.tokenizer, prompts), seconds))

    vanilla = next((seconds / n for name, n, _, seconds in rows if name == "vanilla"), None)
    print("| attack | prompts | mean prompt tokens | wall (s) | s per prompt | vs vanilla |")
    print("|---|---|---|---|---|---|")
    for name, n, tokens, seconds in rows:
        ratio = f"{seconds / n / vanilla:.2f}" if vanilla else "–"
        print(f"| {name} | {n} | {tokens:.0f} | {seconds:.1f} | {seconds / n:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
