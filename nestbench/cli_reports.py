"""Commands that read run records: ``leaderboard``, ``plot`` and ``check``, plus ``sweep``.

``nestbench.cli`` registers them with ``cli.add_command``; they live here so the run
command's module stays small.
"""

from __future__ import annotations

from pathlib import Path

import click

from nestbench.leaderboard import FORMATS

_FILTER_OPTIONS = (
    click.option("--include-quick", is_flag=True, help="Show quick-profile runs (left out by default)."),
    click.option("--include-limited", is_flag=True, help="Show runs made with --limit (left out by default)."),
    click.option("--include-failed", is_flag=True, help="Show failed, cancelled and unfinished runs."),
    click.option("--include-dirty", is_flag=True, help="Show runs made from a checkout with uncommitted changes."),
)


def _filter_options(function):
    for option in reversed(_FILTER_OPTIONS):
        function = option(function)
    return function


def _filters(include_quick: bool, include_limited: bool, include_failed: bool, include_dirty: bool):
    from nestbench.leaderboard import Filters

    return Filters(include_quick, include_limited, include_failed, include_dirty)


@click.command()
@click.argument("results_dir", type=click.Path(path_type=Path), default=Path("results"))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="markdown", show_default=True,
              help="Output format; latex writes a booktabs table.")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write to this file instead of standard output.")
@click.option("--source-label", help="Folder name printed in the markdown header (default: RESULTS_DIR as given).")
@_filter_options
def leaderboard(results_dir, fmt, output, source_label, include_quick, include_limited, include_failed, include_dirty):
    """Print one row per (model, method) from the run records under RESULTS_DIR."""
    from nestbench.leaderboard import leaderboard_from_dir, render
    from nestbench.records import atomic_write_text

    board = leaderboard_from_dir(
        results_dir, _filters(include_quick, include_limited, include_failed, include_dirty), source=source_label
    )
    text = render(board, fmt)
    if output is None:
        click.echo(text, nl=False)
    else:
        atomic_write_text(output, text)
        click.echo(f"wrote {output}")


@click.command()
@click.argument("results_dir", type=click.Path(path_type=Path), default=Path("results"))
@click.option("--out", "out_dir", type=click.Path(path_type=Path),
              help="Folder for the figures (default: RESULTS_DIR, next to the tables).")
@click.option("--formats", default="png,svg", show_default=True, help="Comma-separated image formats.")
@_filter_options
def plot(results_dir, out_dir, formats, include_quick, include_limited, include_failed, include_dirty):
    """Draw ASR per attack, safety against utility, and NeST's safety neurons per layer."""
    from nestbench.plots import write_plots

    paths = write_plots(
        results_dir,
        out_dir or results_dir,
        _filters(include_quick, include_limited, include_failed, include_dirty),
        tuple(f.strip() for f in formats.split(",") if f.strip()),
    )
    for path in paths:
        click.echo(f"wrote {path}")


@click.command()
@click.argument("record", type=click.Path(path_type=Path))
@click.option("--baseline", type=click.Path(path_type=Path),
              help="The none run's record (default: the run's own baseline, when it is in the same runs folder).")
@click.option("--max-asr", type=float, help="Upper bound on unsafe_rate and every asr[attack], as a fraction.")
@click.option("--max-utility-drop", type=float, help="Upper bound on each <task>/acc drop from the baseline, as a fraction.")
@click.option("--max-over-refusal", type=float, help="Upper bound on over_refusal, as a fraction.")
@click.option("--tolerance", type=float, default=0.0, show_default=True, help="Slack added to every bound, as a fraction.")
def check(record, baseline, max_asr, max_utility_drop, max_over_refusal, tolerance):
    """Exit 0 when RECORD meets every bound, 1 listing each violated bound, 2 on unusable input."""
    from nestbench.check import Bounds, check_record, find_baseline, load_record

    bounds = Bounds(max_asr, max_utility_drop, max_over_refusal, tolerance)
    record_file, run_record = load_record(record)
    if baseline is not None:
        _, baseline_record = load_record(baseline)
    elif max_utility_drop is not None:
        found = find_baseline(record_file, run_record)
        baseline_record = None if found is None else found[1]
    else:
        baseline_record = None
    violations = check_record(run_record, bounds, baseline_record)
    for violation in violations:
        click.echo(str(violation))
    if violations:
        # SystemExit passes through click's non-standalone mode, which would swallow ctx.exit(1).
        raise SystemExit(1)
    click.echo(f"ok: run {run_record.get('run_id')} meets every bound")


@click.command()
@click.option("--models", required=True, help="Comma-separated models (hub ids, folders or aliases).")
@click.option("--methods", default="nest", show_default=True, help="Comma-separated methods; none runs first per model.")
@click.option("--executor", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="submitit executor: local processes, or Slurm jobs.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--profile", default="quick", show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Recipe override, as for run.")
@click.option("--attacks", help="Comma-separated attacks.")
@click.option("--utility-tasks", help="Comma-separated utility tasks.")
@click.option("--train-prompts", type=click.Path(path_type=Path))
@click.option("--benign-prompts", type=click.Path(path_type=Path))
@click.option("--eval-prompts", type=click.Path(path_type=Path))
@click.option("--epochs", type=int)
@click.option("--max-new-tokens", type=int)
@click.option("--limit", type=int)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--backend", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True)
@click.option("--timeout-min", type=int, default=240, show_default=True, help="Time limit per job, in minutes.")
@click.option("--gpus-per-node", type=int, default=0, show_default=True, help="GPUs per job.")
@click.option("--cpus-per-task", type=int, help="CPU cores per job.")
@click.option("--mem-gb", type=int, help="Memory per job, in GB.")
@click.option("--partition", help="Slurm partition (slurm executor only).")
@click.option("--jobs-dir", type=click.Path(path_type=Path), help="submitit logs (default: RESULTS_DIR/sweeps).")
def sweep(models, methods, executor, results_dir, profile, overrides, attacks, utility_tasks, train_prompts,
          benign_prompts, eval_prompts, epochs, max_new_tokens, limit, seed, device, dtype, backend, timeout_min,
          gpus_per_node, cpus_per_task, mem_gb, partition, jobs_dir):
    """Run one job per (model, method) through submitit, then print the leaderboard of the records."""
    from nestbench.cli import _split
    from nestbench.config import parse_overrides
    from nestbench.runner import RunRequest
    from nestbench.sweep import JobResources, run_sweep

    template = RunRequest(
        model="",
        device=device,
        dtype=dtype,
        profile=profile,
        overrides=parse_overrides(overrides),
        train_prompts=train_prompts,
        benign_prompts=benign_prompts,
        eval_prompts=eval_prompts,
        attacks=_split(attacks),
        utility_tasks=_split(utility_tasks),
        seed=seed,
        results_dir=results_dir,
        limit=limit,
        epochs=epochs,
        max_new_tokens=max_new_tokens,
        backend=backend,
    )
    resources = JobResources(timeout_min, gpus_per_node, cpus_per_task, mem_gb, partition)
    result = run_sweep(_split(models), _split(methods), template, executor, resources, jobs_dir)
    click.echo(result.leaderboard_text, nl=False)
    click.echo(f"wrote {result.leaderboard_path}")
    if result.failed:
        click.echo(f"{len(result.failed)} job(s) failed: {', '.join(result.failed)}", err=True)
        raise SystemExit(1)


COMMANDS = (leaderboard, plot, check, sweep)
