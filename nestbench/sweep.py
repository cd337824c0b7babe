"""Sweeps over models and methods: one submitit job per (model, method), then one leaderboard.

The ``none`` job of every model runs first and the method jobs wait for it, so they all
reuse one baseline record per model instead of each evaluating the untouched model (two
parallel jobs would otherwise both write one). submitit's ``local`` executor runs the jobs
as processes on this machine; ``slurm`` submits them with ``sbatch``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nestbench.errors import ConfigError, NestbenchError
from nestbench.leaderboard import Filters, build_leaderboard, render
from nestbench.records import atomic_write_text, read_record

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm")
LEADERBOARD_NAME = "leaderboard.md"


@dataclass(frozen=True)
class JobResources:
    """Resources requested from the executor for each job."""

    timeout_min: int = 240
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    partition: str | None = None


@dataclass
class SweepResult:
    record_paths: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    leaderboard_text: str = ""
    leaderboard_path: Path | None = None


def run_job(request: Any) -> list[str]:
    """Run one (model, method) job and return the paths of the records it wrote or reused.

    This is the function submitit pickles and calls in the job's process.
    """
    from nestbench.cli import _setup_logging
    from nestbench.runner import run

    _setup_logging(verbose=False)
    records = run(request)
    return [str(Path(request.results_dir) / "runs" / record["run_id"] / "record.json") for record in records]


def make_executor(kind: str, folder: Path, resources: JobResources) -> Any:
    """Build a submitit executor of ``kind`` ('local' or 'slurm') that logs to ``folder``."""
    try:
        import submitit
    except ImportError as err:
        raise NestbenchError("nestbench sweep needs submitit; install it with: pip install 'nestbench[sweep]'") from err
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor {kind!r}; use one of {', '.join(EXECUTORS)}")
    if kind == "local" and resources.partition:
        raise ConfigError(f"--partition {resources.partition!r} applies to the slurm executor only; drop it for local")
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=kind)
    except RuntimeError as err:  # submitit raises this when Slurm's srun is not on PATH
        raise NestbenchError(
            f"cannot use the {kind} executor: {err}. Run the sweep on a Slurm login node, or use --executor local"
        ) from err
    parameters: dict[str, Any] = {"timeout_min": resources.timeout_min, "gpus_per_node": resources.gpus_per_node,
                                  "name": "nestbench"}
    if resources.cpus_per_task is not None:
        parameters["cpus_per_task"] = resources.cpus_per_task
    if resources.mem_gb is not None:
        parameters["mem_gb"] = resources.mem_gb
    if resources.partition:
        parameters["slurm_partition"] = resources.partition
    executor.update_parameters(**parameters)
    return executor


def plan_jobs(models: Sequence[str], methods: Sequence[str], template: Any) -> tuple[list[Any], list[Any]]:
    """Return the ``none`` requests (one per model) and the method requests (one per model and method)."""
    if not models:
        raise ConfigError("--models is empty; pass at least one model")
    if len(set(models)) != len(models) or len(set(methods)) != len(methods):
        raise ConfigError(f"--models {list(models)} or --methods {list(methods)} names an entry twice; list each once")
    baselines = [dataclasses.replace(template, model=model, methods=("none",)) for model in models]
    tuned = [
        dataclasses.replace(template, model=model, methods=(method,))
        for model in models
        for method in methods
        if method != "none"
    ]
    return baselines, tuned


def _wait(jobs: list[tuple[str, Any]], result: SweepResult) -> None:
    for label, job in jobs:
        try:
            paths = job.result()
        except Exception as err:  # submitit raises its own FailedJobError, or the job's exception
            lines = str(err).strip().splitlines()
            logger.error("job %s (%s) failed: %s. Log: %s", label, job.job_id, lines[-1] if lines else repr(err),
                         job.paths.stderr)
            result.failed.append(label)
            continue
        result.record_paths.extend(Path(p) for p in paths if Path(p) not in result.record_paths)
        logger.info("job %s finished", label)


def run_sweep(
    models: Sequence[str],
    methods: Sequence[str],
    template: Any,
    executor_kind: str = "local",
    resources: JobResources = JobResources(),
    jobs_dir: Path | None = None,
) -> SweepResult:
    """Submit the jobs, wait for them, and write ``leaderboard.md`` of the sweep's records."""
    from nestbench.methods import METHODS

    for method in methods:
        METHODS.get(method)
    baselines, tuned = plan_jobs(models, methods, template)
    results_dir = Path(template.results_dir)
    executor = make_executor(executor_kind, jobs_dir or results_dir / "sweeps", resources)
    result = SweepResult()

    # Stage 1: the untouched model of each model; stage 2 reuses those records.
    for stage in (baselines, tuned):
        if not stage:
            continue
        jobs = [(f"{request.model}:{request.methods[0]}", executor.submit(run_job, request)) for request in stage]
        logger.info("submitted %d job(s) to the %s executor: %s", len(jobs), executor_kind,
                    ", ".join(f"{label} ({job.job_id})" for label, job in jobs))
        _wait(jobs, result)

    records = [read_record(path) for path in result.record_paths if path.is_file()]
    # The sweep shows what it ran, so its own profile, limit and checkout state are not filtered.
    board = build_leaderboard(records, Filters(include_quick=True, include_limited=True, include_dirty=True),
                              source=str(results_dir))
    result.leaderboard_text = render(board, "markdown")
    result.leaderboard_path = results_dir / LEADERBOARD_NAME
    atomic_write_text(result.leaderboard_path, result.leaderboard_text)
    return result
