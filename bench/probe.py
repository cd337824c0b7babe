"""Time NeST's probe stage and compare its safety neurons with a reference Adam probe.

The reference is the NeST paper's probe: full-batch Adam for 5,000 epochs. It takes minutes,
so its probe weights are computed once and cached. The cache key is made of the model hash,
the hash of the prompts and labels, and the reference settings, and later runs reuse it.
Each candidate is a set of NeST recipe keys, timed through the same code path as the
``probes`` stage of ``nestbench run``. The overlap is the Jaccard index of the sets of
(module, neuron) pairs selected at each z threshold.

    OMP_NUM_THREADS=2 python bench/probe.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from common import add_common_arguments, load, machine_description, positive_int, print_table, probe_prompts, setup, sha256_json

DEFAULT_CANDIDATES = (
    "probe_solver=lbfgs",
    "probe_solver=adam probe_epochs=500 probe_lr=0.01 probe_seeds=1",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--prompts", type=positive_int, default=800, help="probe prompts, half harmful and half benign (default: 800)")
    parser.add_argument(
        "--candidate",
        action="append",
        default=None,
        metavar="'KEY=VALUE ...'",
        help="NeST recipe keys of one probe set-up, space separated; repeat for several "
        f"(default: {' and '.join(repr(c) for c in DEFAULT_CANDIDATES)})",
    )
    parser.add_argument("--reference-epochs", type=positive_int, default=5000, help="Adam epochs of the reference probe (default: 5000)")
    parser.add_argument("--reference-seeds", type=positive_int, default=1, help="initialisations averaged in the reference (default: 1)")
    parser.add_argument(
        "--modules",
        default=None,
        help="comma-separated indices of the modules to probe, in layer order (default: all), for cheap comparisons",
    )
    parser.add_argument("--z-thresholds", default="3,2", help="comma-separated z thresholds to compare selections at (default: 3,2)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="folder for the cached reference probe weights (default: <nestbench cache>/bench)",
    )
    parser.add_argument("--recompute-reference", action="store_true", help="train the reference again even when it is cached")
    parser.add_argument(
        "--activations-file",
        type=Path,
        default=None,
        help="reuse pooled activations from this file when its key matches, else compute and write them there",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from nestbench.config import build_config, parse_overrides
    from nestbench.errors import ConfigError
    from nestbench.methods.nest.config import NestConfig
    from nestbench.methods.nest.method import NestMethod
    from nestbench.methods.nest.probes import find_ffn_projections, pooled_activations, select_safety_neurons
    from nestbench.models import cache_root

    args = parse_args(argv)
    setup(args)
    thresholds = [float(z) for z in args.z_thresholds.split(",")]
    candidates = args.candidate or list(DEFAULT_CANDIDATES)
    configs = [build_config(NestConfig, parse_overrides(spec.split()), f"--candidate {spec!r}") for spec in candidates]
    reference_config = NestConfig(
        probe_solver="adam", probe_epochs=args.reference_epochs, probe_seeds=args.reference_seeds
    )

    loaded = load(args)
    prompts, labels = probe_prompts(args.prompts, args.seed)
    data_hash = sha256_json({"prompts": prompts, "labels": labels.tolist()})
    all_projections = find_ffn_projections(loaded.model, reference_config.projections)
    projections = all_projections
    if args.modules:
        names = list(all_projections)
        try:
            projections = {names[int(i)]: all_projections[names[int(i)]] for i in args.modules.split(",")}
        except (ValueError, IndexError) as err:
            raise ConfigError(f"--modules {args.modules!r} is invalid; give indices from 0 to {len(names) - 1}") from err

    activations, activation_seconds = _activations(
        args.activations_file, {"model": loaded.model_hash, "data": data_hash},
        lambda: pooled_activations(loaded.model, loaded.tokenizer, prompts, all_projections, reference_config.activation_batch_size),
    )

    activations = {name: activations[name] for name in projections}
    reference_key = sha256_json({
        "modules": list(projections),
        "model_sha256": loaded.model_hash,
        "data_sha256": data_hash,
        "seed": args.seed,
        "probe": {k: v for k, v in reference_config.to_dict().items() if k.startswith("probe_")},
    })
    cache_dir = args.cache_dir or cache_root() / "bench"
    reference_path = cache_dir / f"probe-reference-{reference_key[:20]}.safetensors"
    reference, reference_seconds, cached = _reference(
        reference_path, args.recompute_reference,
        lambda: NestMethod(reference_config)._train_probes(activations, labels, args.seed),
    )

    rows = []
    for spec, config in zip(candidates, configs):
        start = time.perf_counter()
        weights, accuracy = NestMethod(config)._train_probes(activations, labels, args.seed)
        seconds = time.perf_counter() - start
        row = {
            "candidate": spec,
            "probe stage (s)": f"{seconds:.1f}",
            "time / reference": f"{seconds / reference_seconds:.3f}",
            "mean held-out acc": f"{sum(accuracy.values()) / len(accuracy):.3f}",
        }
        for z in thresholds:
            ours = _selected(weights, z, select_safety_neurons)
            theirs = _selected(reference, z, select_safety_neurons)
            row[f"Jaccard z={z:g}"] = f"{_jaccard(ours, theirs):.3f}"
            row[f"neurons z={z:g} (ref)"] = f"{len(ours)} ({len(theirs)})"
        rows.append(row)

    print(f"machine: {machine_description()}")
    print(f"model: {args.model} ({len(projections)} modules), {len(prompts)} probe prompts, seed {args.seed}")
    print(f"pooled activations: {activation_seconds:.1f} s (not part of the probe stage)")
    origin = f"cached in {reference_path}" if cached else f"computed now, written to {reference_path}"
    print(
        f"reference: adam, {args.reference_epochs} epochs, {args.reference_seeds} seed(s): "
        f"{reference_seconds:.1f} s ({origin})"
    )
    print_table(rows, list(rows[0]))
    return 0


def _activations(path: Path | None, key: dict, compute) -> tuple[dict[str, torch.Tensor], float]:
    """Return pooled activations and the seconds they took, read from ``path`` when its key matches."""
    if path is not None and path.is_file():
        stored = torch.load(path, weights_only=True)
        if stored.get("key") == json.dumps(key, sort_keys=True):
            return stored["activations"], float(stored["seconds"])
    start = time.perf_counter()
    activations = compute()
    seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": json.dumps(key, sort_keys=True), "activations": activations, "seconds": seconds}, path)
    return activations, seconds


def _reference(path: Path, recompute: bool, compute) -> tuple[dict[str, torch.Tensor], float, bool]:
    """Return the reference probe weights, their training seconds and whether they came from the cache."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if path.is_file() and not recompute:
        with safe_open(str(path), framework="pt") as handle:
            weights = {name: handle.get_tensor(name) for name in handle.keys()}
            seconds = float(json.loads(handle.metadata()["bench"])["seconds"])
        return weights, seconds, True
    start = time.perf_counter()
    weights, _accuracy = compute()
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: w.contiguous() for name, w in weights.items()}
    save_file(tensors, str(path), metadata={"bench": json.dumps({"seconds": seconds})})
    return weights, seconds, False


def _selected(weights: dict[str, torch.Tensor], z: float, select) -> set[tuple[str, int]]:
    return {(name, int(i)) for name, w in weights.items() for i in select(w, z)}


def _jaccard(a: set, b: set) -> float:
    # Two empty selections agree completely.
    return len(a & b) / len(a | b) if a | b else 1.0


if __name__ == "__main__":
    sys.exit(main())
