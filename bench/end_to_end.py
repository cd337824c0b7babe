"""Time ``nestbench run`` by stage, from the timings its run records store.

Runs the command in this process with a fresh results folder, so the ``none`` baseline is
evaluated too, and prints each stage's seconds and share of the wall time: model load,
self-distillation answers, NeST's activations, probes, clustering, SFT and fold, saving the
tuned model, and each lm-eval task of each evaluated model. Arguments that this script
does not define go to ``nestbench run``; the default is ``--method nest --profile quick``.

    OMP_NUM_THREADS=2 python bench/end_to_end.py
    python bench/end_to_end.py --limit 2 --epochs 1    # a smoke run, not a measurement
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import machine_description, print_table

DEFAULT_RUN_ARGS = ["--method", "nest", "--profile", "quick"]
NEST_STAGES = ("activations", "probes", "clustering", "training", "fold")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Other arguments, for example --limit 2 --epochs 1 --model DIR, are passed to nestbench run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="folder for the run records (default: a temporary folder, deleted afterwards)",
    )
    args, run_args = parser.parse_known_args(argv)
    if "--results-dir" in run_args:
        parser.error("give --results-dir once, before the nestbench run arguments")
    given = set(run_args)
    for option, value in zip(DEFAULT_RUN_ARGS[::2], DEFAULT_RUN_ARGS[1::2]):
        if option not in given:
            run_args = [option, value, *run_args]
    return args, run_args


def main(argv: list[str] | None = None) -> int:
    from nestbench.cli import cli

    args, run_args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nestbench-e2e-") as scratch:
        results_dir = args.results_dir or Path(scratch)
        command = ["run", *run_args, "--results-dir", str(results_dir), "--no-baseline-reuse"]
        start = time.perf_counter()
        cli.main(args=command, standalone_mode=False)
        wall = time.perf_counter() - start
        records = [json.loads(path.read_text()) for path in sorted((results_dir / "runs").glob("*/record.json"))]

    rows = stage_rows(records)
    top_level = ("load", "sft_data", "tune", "evaluate")
    accounted = sum(record.get("timings", {}).get(key, 0.0) for record in records for key in top_level)
    rows.append({"model": "-", "stage": "other (data loading, saving models, table)", "seconds": wall - accounted})
    for row in rows:
        row["share of wall"] = f"{100 * row['seconds'] / wall:.1f}%"
        row["seconds"] = f"{row['seconds']:.1f}"
    print(f"machine: {machine_description()}")
    print(f"command: nestbench {' '.join(command[:-3])}")
    print(f"wall time: {wall:.1f} s")
    print_table(rows, ["model", "stage", "seconds", "share of wall"])
    return 0


def stage_rows(records: list[dict]) -> list[dict]:
    """Return one row per recorded stage, baseline first, with seconds as floats."""
    rows = []
    for record in sorted(records, key=lambda r: r["method"] != "none"):
        method, timings = record["method"], record.get("timings", {})
        if method == "none":
            rows.append({"model": "-", "stage": "load model", "seconds": timings.get("load", 0.0)})
        if "sft_data" in timings:
            rows.append({"model": method, "stage": "self-distillation answers", "seconds": timings["sft_data"]})
        method_timings = record.get("method_report", {}).get("timings", {})
        for stage in NEST_STAGES:
            if stage in method_timings:
                rows.append({"model": method, "stage": f"tune: {stage}", "seconds": method_timings[stage]})
        if "tune" in timings:
            rows.append({"model": method, "stage": "tune (total)", "seconds": timings["tune"]})
        for task, seconds in timings.get("evaluate_tasks", {}).items():
            rows.append({"model": method, "stage": f"evaluate: {task}", "seconds": seconds})
        if "evaluate" in timings:
            rows.append({"model": method, "stage": "evaluate (total)", "seconds": timings["evaluate"]})
    return rows


if __name__ == "__main__":
    sys.exit(main())
