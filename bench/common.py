"""Helpers shared by the bench scripts: threads, model and prompt loading, the machine line, tables.

The scripts import this module as ``common`` because Python puts the script's own folder
first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from nestbench.errors import ConfigError

logger = logging.getLogger("bench")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options every bench script takes: model, device, threads, seed and log level."""
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="model alias, local model folder or .gguf file (default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: OMP_NUM_THREADS, else torch's default)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for prompt sampling and initialisation")
    parser.add_argument("--verbose", action="store_true", help="log at INFO level")


def positive_int(text: str) -> int:
    """Parse a command-line integer that must be at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid; use an integer >= 1")
    return value


def setup(args: argparse.Namespace) -> None:
    """Configure logging and the torch thread count from the parsed common options."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads} is invalid; use an integer >= 1")
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)


def load(args: argparse.Namespace):
    """Load ``args.model`` through nestbench's loader and return its ``LoadedModel``."""
    from nestbench.models import load_model

    return load_model(args.model, device=args.device, dtype="float32" if args.device == "cpu" else "auto")


def probe_prompts(n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """Return ``n`` prompts, half harmful (DoNotAnswer, label 1) and half benign (label 0), and labels.

    These are the offline training sets that ``nestbench run`` uses by default.
    """
    from nestbench.prompts import load_prompt_set, sample_prompts

    if n < 2:
        raise ConfigError(f"--prompts {n} is invalid; use at least 2 (one harmful, one benign)")
    harmful = sample_prompts(load_prompt_set("donotanswer").prompts, n // 2, seed)
    benign = sample_prompts(load_prompt_set("benign-qa").prompts, n - n // 2, seed)
    labels = torch.tensor([1] * len(harmful) + [0] * len(benign))
    return list(harmful) + list(benign), labels


def sha256_json(value) -> str:
    """Hash a JSON-serialisable value with sorted keys."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def machine_description() -> str:
    """Describe the CPU, the torch threads and the current load, for the figures' context."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    return (
        f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} with {torch.get_num_threads()} "
        f"threads, load average {load}"
    )


def median(values: Sequence[float]) -> float:
    """Return the median of a non-empty sequence."""
    return statistics.median(values)


def print_table(rows: list[dict], headers: Sequence[str]) -> None:
    """Print ``rows`` as a GitHub Markdown table with the given column order."""
    from tabulate import tabulate

    print(tabulate([[row.get(h, "") for h in headers] for row in rows], headers=list(headers), tablefmt="github"))
