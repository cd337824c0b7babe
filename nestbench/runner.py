"""The main job: load a model and data, tune with each method, evaluate, and write run records.

``run`` is the Python API behind ``nestbench run``. The untouched model (method ``none``)
is evaluated once per protocol and its record is reused by later runs with the same model,
data and evaluation settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nestbench import __version__
from nestbench.backends import BACKENDS, resolve_backend
from nestbench.errors import ConfigError, NestbenchError
from nestbench.profiles import Profile
from nestbench.gencache import generation_cache_prefix
from nestbench.prompts import PromptSet, check_disjoint, load_prompt_file, load_prompt_set, sample_prompts
from nestbench.records import (
    GENERATIONS_NAME,
    git_state,
    iter_records,
    library_versions,
    machine_info,
    new_run_id,
    sha256_json,
    utc_now,
    write_jsonl,
    write_record,
)
from nestbench.resume import keep_partial_results, recorded_seeds, request_to_dict, save_tuned_model
from nestbench.validate import RunPlan, plan_run

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass
class RunRequest:
    """Everything ``nestbench run`` takes; defaults give the embedded quick run."""

    methods: tuple[str, ...] = ("nest",)
    model: str = "smollm2-135m-instruct"
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    profile: str = "quick"
    overrides: dict[str, Any] = field(default_factory=dict)
    harmful_set: str = "donotanswer"
    benign_set: str = "benign-qa"
    eval_set: str = "harmbench"
    train_prompts: Path | None = None
    benign_prompts: Path | None = None
    eval_prompts: Path | None = None
    attacks: tuple[str, ...] | None = None
    utility_tasks: tuple[str, ...] | None = None
    seed: int = 0
    results_dir: Path = Path("results")
    limit: int | None = None
    epochs: int | None = None
    max_new_tokens: int | None = None
    reuse_baseline: bool = True
    # The first judge gives the metrics, and each further one is scored on the same responses.
    judges: tuple[str, ...] = ("keyword",)
    judge_models: dict[str, str] = field(default_factory=dict)
    over_refusal_set: str | None = "nestbench-benign"
    backend: str = "hf"


@dataclass
class RunData:
    harmful_train: PromptSet
    benign_train: PromptSet
    harmful_eval: PromptSet

    def describe(self) -> dict[str, Any]:
        return {
            role: {"name": s.name, "source": s.source, "license": s.license, "sha256": s.sha256, "n": len(s),
                   "duplicates_removed": s.duplicates_removed}
            for role, s in (("harmful_train", self.harmful_train), ("benign_train", self.benign_train),
                            ("harmful_eval", self.harmful_eval))
        }


def _subset(prompt_set: PromptSet, n: int | None, seed: int) -> PromptSet:
    if n is None or n >= len(prompt_set):
        return prompt_set
    prompts = sample_prompts(prompt_set.prompts, n, seed)
    return PromptSet(prompt_set.name, prompts, prompt_set.source, prompt_set.license, prompt_set.role,
                     prompt_set.duplicates_removed)


def load_run_data(request: RunRequest, profile: Profile) -> RunData:
    """Load, subsample and cross-check the training and evaluation prompt sets."""
    harmful = load_prompt_file(request.train_prompts) if request.train_prompts else load_prompt_set(request.harmful_set)
    benign = load_prompt_file(request.benign_prompts) if request.benign_prompts else load_prompt_set(request.benign_set)
    evaluation = load_prompt_file(request.eval_prompts) if request.eval_prompts else load_prompt_set(request.eval_set)

    # Disjointness is checked on the full sets, so a subset can never hide an overlap.
    check_disjoint(harmful.prompts, evaluation.prompts, harmful.name, evaluation.name)
    check_disjoint(benign.prompts, evaluation.prompts, benign.name, evaluation.name)

    harmful = _subset(harmful, profile.train_harmful, request.seed)
    n_benign = profile.train_benign if profile.train_benign is not None else len(harmful)
    benign = _subset(benign, n_benign, request.seed)
    eval_n = request.limit if request.limit is not None else profile.eval_harmful
    evaluation = _subset(evaluation, eval_n, request.seed)
    for prompt_set in (harmful, benign, evaluation):
        logger.info("prompt set %s: %d prompts (%s)", prompt_set.name, len(prompt_set), prompt_set.source)
    return RunData(harmful, benign, evaluation)


def peak_memory_mb(device: torch.device) -> float:
    """Return peak memory in MiB since the last ``reset_peak_memory``.

    On a GPU this is the CUDA allocator peak. Otherwise it is the process's peak RSS
    (Linux VmHWM); where that cannot be reset, it covers the whole process lifetime.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window, so each method reports its own peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0 and later).
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def disk_size(path: Path) -> int:
    """Return the bytes of a file, or of every file under a folder (0 when missing)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(request: RunRequest) -> list[dict[str, Any]]:
    """Run the main job and return the records: the ``none`` baseline first, then each method."""
    request = dataclasses.replace(request, methods=expand_methods(request.methods))
    if request.backend not in BACKENDS:
        raise ConfigError(f"unknown backend {request.backend!r}; use one of {', '.join(BACKENDS)}")
    plan = plan_run(request)
    methods = plan.methods
    context = open_context(request, plan)
    loaded = context.loaded

    records = [context.baseline()]
    tuned = [(name, method) for name, method in methods.items() if name != "none"]
    base_state = None
    for index, (name, method) in enumerate(tuned):
        if base_state is not None:
            loaded.model.load_state_dict(base_state)
        elif index < len(tuned) - 1:
            # Later methods must start from the untouched model too.
            base_state = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
        record = context.start_record(name, method)
        try:
            context.tune_into(record, method)
        except Exception as err:
            # One method's failure is recorded and the comparison goes on with the others.
            if record["status"] == "running":
                record.update(status="failed", finished=utc_now(), error=_error_info(err))
                write_record(context.results_dir / "runs" / record["run_id"], record)
            logger.error("method %s failed (%s: %s); record %s keeps the traceback",
                         name, type(err).__name__, err, record["run_id"])
        records.append(record)
    return records


def open_context(request: RunRequest, plan: RunPlan) -> _RunContext:
    """Check the results folder, then load the prompt sets and the model of a planned run."""
    from nestbench.models import load_model

    _check_single_process()
    results_dir = _prepare_results_dir(request.results_dir)
    data = load_run_data(request, plan.profile)
    start = time.perf_counter()
    loaded = load_model(request.model, device=request.device, dtype=request.dtype,
                        trust_remote_code=request.trust_remote_code)
    load_seconds = time.perf_counter() - start
    return _RunContext(request, plan.profile, data, loaded, plan.settings, results_dir, load_seconds)


def expand_methods(names: tuple[str, ...]) -> tuple[str, ...]:
    """Check the method names and expand ``all`` to every registered method but ``none``."""
    from nestbench.methods import METHODS

    expanded: list[str] = []
    for name in names:
        candidates = [m for m in METHODS if m != "none"] if name == "all" else [name]
        for candidate in candidates:
            METHODS.get(candidate)
            if candidate not in expanded:
                expanded.append(candidate)
    return tuple(expanded)


def _check_single_process() -> None:
    """Raise ConfigError when launched as one of several processes (``accelerate launch``, ``torchrun``).

    TODO: the training loop does not shard batches or synchronise gradients, and every process
    would pick its own run id, so several processes would each tune the whole model and write
    their own records. Until that exists, only a single-process launch is accepted.
    """
    world_size = os.environ.get("WORLD_SIZE", "1")
    if world_size.strip() not in ("", "1"):
        raise ConfigError(
            f"nestbench run was started as one of WORLD_SIZE={world_size} processes, but it trains in one process "
            "only. Launch it with `accelerate launch --num_processes 1 -m nestbench run ...`, or spread (model, "
            "method) jobs over GPUs with `nestbench sweep`"
        )


def _prepare_results_dir(path: Path) -> Path:
    try:
        (path / "runs").mkdir(parents=True, exist_ok=True)
        # A uniquely named probe file, because sweep jobs check the same folder in parallel.
        with tempfile.NamedTemporaryFile(dir=path / "runs", prefix=".write-test-"):
            pass
    except OSError as err:
        raise NestbenchError(
            f"results directory {path} is not writable ({err.strerror}); pass a writable folder with --results-dir"
        ) from err
    return path


class _RunContext:
    """State shared by the baseline and every method of one ``run`` call."""

    def __init__(self, request, profile, data, loaded, settings, results_dir, load_seconds):
        self.request = request
        self.profile = profile
        self.data = data
        self.loaded = loaded
        self.settings = settings
        self.results_dir = results_dir
        self.load_seconds = load_seconds
        self.training_data = None
        self.baseline_id: str | None = None
        self.backend = resolve_backend(request.backend)

    def protocol(self) -> dict[str, Any]:
        """Return the settings that change evaluation numbers; records compare only when these match.

        ``backend`` appears only for a backend other than ``hf``, so records made before the
        option existed keep their protocol key.
        """
        protocol = {
            "model_sha256": self.loaded.model_hash,
            "chat_template_sha256": self.loaded.chat_template_hash,
            "dtype": str(self.loaded.dtype),
            "harmful_eval_sha256": self.data.harmful_eval.sha256,
            "evaluation": self.settings.as_dict(),
            "nestbench": __version__,
        }
        if self.backend != "hf":
            protocol["backend"] = self.backend
        return protocol

    def _base_record(self, method: str, config: dict[str, Any], run_id: str) -> dict[str, Any]:
        protocol = self.protocol()
        limited = self.request.limit is not None
        return {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "status": "running",
            "created": utc_now(),
            "method": method,
            "method_config": config,
            "profile": self.profile.to_dict(),
            "quick": self.profile.name == "quick",
            "limited": limited,
            "seed": self.request.seed,
            "seeds": recorded_seeds(self.request.seed),
            "request": request_to_dict(self.request),
            "stages": {},
            "model": {
                "spec": self.loaded.spec,
                "source": self.loaded.source,
                "sha256": self.loaded.model_hash,
                "chat_template_sha256": self.loaded.chat_template_hash,
                "device": str(self.loaded.device),
                "dtype": str(self.loaded.dtype),
                "trust_remote_code": self.request.trust_remote_code,
                "total_parameters": sum(p.numel() for p in self.loaded.model.parameters()),
            },
            "data": self.data.describe(),
            "evaluation": self.settings.as_dict(),
            "judge": {"name": self.settings.judge},
            "backend": {"requested": self.request.backend, "used": self.backend},
            "protocol": protocol,
            "protocol_key": sha256_json(protocol),
            "environment": {"libraries": library_versions(), "git": git_state(), "machine": machine_info()},
            "timings": {"load": self.load_seconds},
        }

    def baseline(self) -> dict[str, Any]:
        """Return the ``none`` record for this protocol, evaluating the untouched model if no record exists."""
        key = sha256_json(self.protocol())
        if self.request.reuse_baseline:
            for folder, record in iter_records(self.results_dir):
                if record.get("method") == "none" and record.get("status") == "success" and record.get("protocol_key") == key:
                    logger.info("reusing baseline record %s (same model, data and evaluation settings)", folder.name)
                    self.baseline_id = record["run_id"]
                    return record
        run_id = new_run_id("none", self.request.model)
        record = self._base_record("none", {}, run_id)
        record["trainable_parameters"] = 0
        record = self._evaluate_into(record, self.loaded.model)
        self.baseline_id = run_id
        return record

    def tune_and_evaluate(self, name: str, method, run_id: str | None = None) -> dict[str, Any]:
        """Tune with ``method``, save the tuned model, then evaluate it; ``run_id`` reuses a run folder."""
        return self.tune_into(self.start_record(name, method, run_id), method)

    def start_record(self, name: str, method, run_id: str | None = None) -> dict[str, Any]:
        """Create the run folder and write the method's record with status ``running``."""
        run_id = run_id or new_run_id(name, self.request.model)
        folder = self.results_dir / "runs" / run_id
        folder.mkdir(parents=True, exist_ok=True)
        record = self._base_record(name, method.config.to_dict(), run_id)
        record["baseline_run_id"] = self.baseline_id
        write_record(folder, record)
        return record

    def tune_into(self, record: dict[str, Any], method) -> dict[str, Any]:
        """Tune with ``method``, save the tuned model and evaluate it, filling ``record`` in place."""
        from nestbench.methods import TuneContext
        from nestbench.sft import TrainingData

        folder = self.results_dir / "runs" / record["run_id"]
        torch.manual_seed(self.request.seed)
        with _recorded_failure(folder, record):
            if method.needs_sft_data:
                if self.training_data is None:
                    self.training_data = TrainingData(
                        harmful=self.data.harmful_train.prompts,
                        benign=self.data.benign_train.prompts,
                        seed=self.request.seed,
                        answer_tokens=self.profile.answer_tokens,
                    )
                start = time.perf_counter()
                self.training_data.prepare(self.loaded.model, self.loaded.tokenizer, self.profile.eval_batch_size)
                record["timings"]["sft_data"] = time.perf_counter() - start
            start = time.perf_counter()
            reset_peak_memory(self.loaded.device)
            result = method.tune(
                TuneContext(
                    model=self.loaded.model,
                    tokenizer=self.loaded.tokenizer,
                    data=self.training_data,
                    work_dir=folder,
                    seed=self.request.seed,
                    epochs=self.profile.epochs,
                    batch_size=self.profile.batch_size,
                )
            )
            record["timings"]["tune"] = time.perf_counter() - start
            record["tune_peak_memory_mb"] = peak_memory_mb(self.loaded.device)

            record["trainable_parameters"] = result.trainable_parameters
            record["trainable_fraction"] = result.trainable_parameters / record["model"]["total_parameters"]
            record["method_report"] = result.report
            # The tuned model is saved before evaluation starts, so `--resume` never tunes twice.
            model_dir = save_tuned_model(result.model, self.loaded.tokenizer, folder)
            write_jsonl(folder / "loss_curve.jsonl", result.loss_curve)
            record["artifacts"] = {"model": str(model_dir), "loss_curve": str(folder / "loss_curve.jsonl"),
                                   **result.artifacts}
            record["artifact_bytes"] = {name: disk_size(Path(path)) for name, path in record["artifacts"].items()}
            record["stages"]["tune"] = utc_now()
            write_record(folder, record)
        reset_peak_memory(self.loaded.device)
        return self._evaluate_into(record, result.model)

    def _evaluate_into(self, record: dict[str, Any], model) -> dict[str, Any]:
        from nestbench.evaluation import evaluate_model

        folder = self.results_dir / "runs" / record["run_id"]
        folder.mkdir(parents=True, exist_ok=True)
        write_record(folder, record)
        start = time.perf_counter()
        with _recorded_failure(folder, record):
            # The cache contains responses of the hf backend, so another backend generates afresh.
            cache = generation_cache_prefix(self.results_dir, model, self.loaded.tokenizer) if self.backend == "hf" else None
            record["generation_cache"] = None if cache is None else str(cache)
            result = evaluate_model(
                model, self.loaded.tokenizer, self.data.harmful_eval.prompts, self.settings, folder,
                cache_path=cache, lm=self._backend_lm(record, model, folder),
            )
            write_jsonl(folder / GENERATIONS_NAME, result.generations, private=True)
        record["timings"]["evaluate"] = time.perf_counter() - start
        record["timings"]["evaluate_tasks"] = result.timings
        record["metrics"] = result.metrics
        record["task_versions"] = result.task_versions
        record["judge"] = result.settings.get("judge_info", record["judge"])
        record["judges"] = result.judges
        record["metrics_by_judge"] = result.metrics_by_judge
        record["judge_agreement"] = result.agreement
        record["peak_memory_mb"] = peak_memory_mb(self.loaded.device)
        record["stages"]["evaluate"] = utc_now()
        record.update(status="success", finished=utc_now())
        write_record(folder, record)
        logger.info("wrote %s", folder / "record.json")
        return record

    def _backend_lm(self, record: dict[str, Any], model, folder: Path):
        """Return the lm-eval model for ``--backend``, or None for the default in-memory ``HFLM``."""
        if self.backend != "vllm":
            return None
        from nestbench.backends import make_vllm_lm, vllm_model_folder

        dtype = str(self.loaded.dtype).removeprefix("torch.")
        return make_vllm_lm(vllm_model_folder(record, self.loaded, model, folder), self.settings.batch_size,
                            dtype, self.request.seed)


@contextlib.contextmanager
def _recorded_failure(folder: Path, record: dict[str, Any]) -> Iterator[None]:
    """Write the record as ``cancelled`` on Ctrl-C or ``failed`` with the traceback on an error, then re-raise."""
    try:
        yield
    except KeyboardInterrupt:
        record.update(status="cancelled", finished=utc_now())
        write_record(folder, record)
        logger.warning(
            "run %s cancelled; finished stages %s are kept. "
            "Continue it with: nestbench run --resume %s --results-dir %s",
            record["run_id"], sorted(record.get("stages", {})) or "none", record["run_id"], folder.parent.parent,
        )
        raise
    except Exception as err:
        record.update(status="failed", finished=utc_now(), error=_error_info(err))
        keep_partial_results(folder, err)
        write_record(folder, record)
        raise


def _error_info(err: BaseException) -> dict[str, Any]:
    info = {"type": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()}
    if isinstance(getattr(err, "step", None), int):
        info["step"] = err.step
    return info
