"""Continue an interrupted or failed run from its last finished stage (``nestbench run --resume``).

A run record stores the request that started it and, under ``stages``, the time each stage
finished: ``tune`` once the tuned model is saved in ``<run>/model/``, ``evaluate`` once the
metrics are written. Resuming rebuilds the request from the record, loads the base model and
prompt sets again, and then either loads the saved tuned model and evaluates it, or tunes
again when tuning never finished. Responses that lm-eval already produced for the same
weights come from the response cache (``nestbench.gencache``), so a resumed evaluation
generates only what is missing.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestbench.errors import RecordWriteError, ResumeError
from nestbench.records import RECORD_NAME, read_record, run_dir, sha256_json, utc_now, write_jsonl

if TYPE_CHECKING:
    from nestbench.runner import RunRequest

logger = logging.getLogger(__name__)

_PATH_FIELDS = ("train_prompts", "benign_prompts", "eval_prompts", "results_dir")
_TUPLE_FIELDS = ("methods", "attacks", "utility_tasks")


def recorded_seeds(seed: int) -> dict[str, int]:
    """Return every seed a run uses, by the step that draws from it.

    All steps take the run's ``--seed``; they are listed apart so a record shows which random
    choices exist.
    """
    return {
        "prompt_sampling": seed,  # subsets of the prompt sets (random.Random)
        "torch": seed,  # torch.manual_seed before each method tunes
        "probe_holdout_and_init": seed,  # probe hold-out split and Adam initialisations (seed + run)
        "kmeans": seed,  # scikit-learn KMeans random_state
        "sft_split_and_shuffle": seed,  # train/validation split and batch order of the update training
        "sft_targets": seed,  # choice of refusal texts for harmful training prompts
    }


def request_to_dict(request: RunRequest) -> dict[str, Any]:
    """Return ``request`` as JSON-ready values, which ``request_from_dict`` turns back into it."""
    values = dataclasses.asdict(request)
    for key in _PATH_FIELDS:
        if values[key] is not None:
            values[key] = str(values[key])
    for key in _TUPLE_FIELDS:
        if values[key] is not None:
            values[key] = list(values[key])
    return values


def request_from_dict(values: dict[str, Any], results_dir: Path) -> RunRequest:
    """Rebuild a ``RunRequest`` from a record's ``request`` entry, writing to ``results_dir``."""
    from nestbench.runner import RunRequest

    names = {field.name for field in dataclasses.fields(RunRequest)}
    kwargs = {key: value for key, value in values.items() if key in names}
    for key in _PATH_FIELDS:
        if kwargs.get(key) is not None:
            kwargs[key] = Path(kwargs[key])
    for key in _TUPLE_FIELDS:
        if kwargs.get(key) is not None:
            kwargs[key] = tuple(kwargs[key])
    kwargs["results_dir"] = results_dir
    return RunRequest(**kwargs)


def keep_partial_results(folder: Path, err: BaseException) -> None:
    """Write what a failed step computed before it failed, such as the loss curve up to a NaN loss."""
    loss_curve = getattr(err, "loss_curve", None)
    if loss_curve:
        write_jsonl(folder / "loss_curve.jsonl", loss_curve)


def resume(results_dir: Path, run_id: str) -> list[dict[str, Any]]:
    """Finish run ``run_id`` in ``results_dir`` and return its records, the ``none`` baseline first.

    Raises ResumeError when the run does not exist, predates resumable records, or was
    started with model weights or evaluation data that differ from what loads now.
    """
    from nestbench.runner import open_context
    from nestbench.validate import plan_run

    folder = run_dir(results_dir, run_id)
    if not (folder / RECORD_NAME).is_file():
        raise ResumeError(
            f"no run {run_id!r} in {results_dir / 'runs'}: {folder / RECORD_NAME} does not exist. "
            "Pass the run id printed by nestbench run, and the same --results-dir"
        )
    record = read_record(folder / RECORD_NAME)
    if record.get("status") == "success":
        logger.info("run %s already finished; nothing to resume", run_id)
        return [record]
    if "request" not in record:
        raise ResumeError(
            f"run {run_id!r} was written by a nestbench version that did not store its request, so it cannot be "
            "resumed. Start it again with nestbench run"
        )

    request = request_from_dict(record["request"], results_dir)
    plan = plan_run(request)
    context = open_context(request, plan)
    _check_same_protocol(record, sha256_json(context.protocol()), run_id)
    logger.info("resuming run %s (%s) after stages: %s", run_id, record["status"],
                ", ".join(sorted(record.get("stages", {}))) or "none")

    method = record["method"]
    if method == "none":
        return [_evaluate_again(context, record, context.loaded.model)]
    baseline = context.baseline()
    saved_model = folder / "model"
    if "tune" in record.get("stages", {}) and saved_model.is_dir():
        record["baseline_run_id"] = context.baseline_id
        model = load_tuned_model(saved_model, context.loaded)
        return [baseline, _evaluate_again(context, record, model)]
    logger.info("tuning of run %s never finished, so it starts again in the same folder", run_id)
    return [baseline, context.tune_and_evaluate(method, plan.methods[method], run_id=run_id)]


def _check_same_protocol(record: dict[str, Any], protocol_key: str, run_id: str) -> None:
    if record.get("protocol_key") != protocol_key:
        raise ResumeError(
            f"run {run_id!r} was started with other model weights, evaluation data or evaluation settings than "
            f"load now (protocol {record.get('protocol_key')} then, {protocol_key} now), so its finished stages "
            "do not apply. Restore the original model and prompt files, or start a new run"
        )


def _evaluate_again(context, record: dict[str, Any], model) -> dict[str, Any]:
    record.setdefault("resumed", []).append(utc_now())
    record.update(status="running")
    record.pop("error", None)
    record.pop("finished", None)
    return context._evaluate_into(record, model)


def save_tuned_model(model, tokenizer, run_folder: Path) -> Path:
    """Save the tuned model and tokenizer as safetensors in ``run_folder/model`` and return that folder."""
    folder = run_folder / "model"
    try:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    except OSError as err:
        raise RecordWriteError(
            f"failed to save the tuned model to {folder}: {err.strerror or err}. Free space on that disk, then "
            f"continue with nestbench run --resume {run_folder.name} (tuning runs again, because it was not saved)"
        ) from err
    return folder


def load_tuned_model(folder: Path, loaded):
    """Load the tuned model that a run saved, from safetensors only, on the base model's device and dtype."""
    from transformers import AutoModelForCausalLM

    from nestbench.errors import ModelLoadError

    logger.info("loading the tuned model saved in %s instead of tuning again", folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=loaded.dtype, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"failed to load the tuned model in {folder}: {err}. Delete that folder and resume again to tune anew"
        ) from err
    model = model.to(loaded.device).eval()
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = loaded.tokenizer.pad_token_id
    return model
