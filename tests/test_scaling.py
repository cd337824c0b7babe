"""Scale-out on existing engines: submitit sweeps and the vLLM backend option, on tiny models."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reports_helpers import FAST_NEST, call_main, records_by_method, tiny_run_args, write_tiny_inputs

from nestbench import backends
from nestbench.errors import ConfigError, NestbenchError
from nestbench.runner import RunRequest
from nestbench.sweep import JobResources, make_executor, plan_jobs

REPO = Path(__file__).resolve().parents[1]

# Sweep


def test_sweep_local_executor(tmp_path):
    # Two models, one of them missing: the good model's NeST job reuses its baseline from the
    # first stage, the missing model's jobs fail, and the sweep exits 1 after building the table.
    model, files = write_tiny_inputs(tmp_path)
    missing = tmp_path / "no-such-model"
    results = tmp_path / "results"
    args = ["sweep", "--models", f"{model},{missing}", "--methods", "nest", "--executor", "local",
            "--results-dir", str(results), "--train-prompts", str(files["train"]),
            "--benign-prompts", str(files["benign"]), "--eval-prompts", str(files["eval"]),
            "--limit", "3", "--epochs", "1", "--max-new-tokens", "4", "--attacks", "vanilla",
            "--utility-tasks", "arc_easy", "--timeout-min", "10", *FAST_NEST]
    code, out, err = call_main(args)
    assert code == 1, out + err
    assert f"2 job(s) failed: {missing}:none, {missing}:nest" in err

    found = records_by_method(results)
    assert [r["model"]["spec"] for r in found["none"]] == [str(model)]
    assert [r["model"]["spec"] for r in found["nest"]] == [str(model)]
    assert found["nest"][0]["status"] == "success"
    assert found["nest"][0]["baseline_run_id"] == found["none"][0]["run_id"]

    board = (results / "leaderboard.md").read_text()
    rows = [line for line in board.splitlines() if line.startswith("| /")]
    assert len(rows) == 2
    assert "| none " in rows[0]
    assert "| nest " in rows[1]
    assert board in out
    assert len(list((results / "sweeps").glob("*_result.pkl"))) == 4


def test_plan_jobs_puts_baselines_first():
    template = RunRequest(model="", profile="quick")
    baselines, tuned = plan_jobs(["a", "b"], ["nest", "none"], template)
    assert [(r.model, r.methods) for r in baselines] == [("a", ("none",)), ("b", ("none",))]
    assert [(r.model, r.methods) for r in tuned] == [("a", ("nest",)), ("b", ("nest",))]
    with pytest.raises(ConfigError, match="names an entry twice"):
        plan_jobs(["a", "a"], ["nest"], template)


def test_local_executor_rejects_partition(tmp_path):
    with pytest.raises(ConfigError, match="--partition 'gpu' applies to the slurm executor only"):
        make_executor("local", tmp_path, JobResources(partition="gpu"))


def test_sweep_unknown_method_exits_2(tmp_path):
    code, _, err = call_main(["sweep", "--models", "x", "--methods", "nets", "--results-dir", str(tmp_path)])
    assert code == 2
    assert "Did you mean 'nest'" in err


# vLLM backend


def test_vllm_missing_falls_back_to_hf(caplog):
    assert not backends.vllm_available(), "vLLM is installed here; this test covers the fallback only"
    with caplog.at_level(logging.WARNING, logger="nestbench.backends"):
        assert backends.resolve_backend("vllm") == "hf"
    assert "vLLM is not installed" in caplog.text
    assert "pip install vllm" in caplog.text
    with pytest.raises(ConfigError, match="unknown backend 'tgi'"):
        backends.resolve_backend("tgi")


def test_run_backend_vllm_fallback_recorded(tmp_path, caplog):
    model, files = write_tiny_inputs(tmp_path)
    results = tmp_path / "results"
    with caplog.at_level(logging.WARNING, logger="nestbench.backends"):
        code, _, err = call_main(tiny_run_args(model, files, results, "--method", "none", "--backend", "vllm"))
    assert code == 0, err
    assert "falls back to the Hugging Face backend" in caplog.text
    record = records_by_method(results)["none"][0]
    assert record["backend"] == {"requested": "vllm", "used": "hf"}
    assert "backend" not in record["protocol"]


def test_run_backend_vllm_plumbing(tmp_path, monkeypatch):
    # vLLM needs CUDA, so lm-eval's HF model loaded from the same folder replaces the vLLM
    # factory. The test checks which folder, batch size and dtype reach that factory.
    from lm_eval.models.huggingface import HFLM

    calls = []

    def fake_vllm(model_folder, batch_size, dtype, seed, **extra):
        calls.append({"folder": model_folder, "batch_size": batch_size, "dtype": dtype, "seed": seed})
        return HFLM(pretrained=model_folder, batch_size=batch_size, dtype=dtype, device="cpu")

    monkeypatch.setattr(backends, "vllm_available", lambda: True)
    monkeypatch.setattr(backends, "make_vllm_lm", fake_vllm)
    model, files = write_tiny_inputs(tmp_path)
    results = tmp_path / "results"
    code, _, err = call_main(tiny_run_args(model, files, results, "--backend", "vllm", *FAST_NEST))
    assert code == 0, err
    found = records_by_method(results)
    none, nest = found["none"][0], found["nest"][0]
    assert [call["folder"] for call in calls] == [str(model), nest["artifacts"]["model"]]
    assert all(call["dtype"] == "float32" and call["batch_size"] == 32 and call["seed"] == 0 for call in calls)
    for record in (none, nest):
        assert record["backend"] == {"requested": "vllm", "used": "vllm"}
        assert record["protocol"]["backend"] == "vllm"
    assert json.loads(json.dumps(nest["metrics"]))["unsafe_rate"]["n"] == 3


# accelerate launch


def test_several_processes_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    model, files = write_tiny_inputs(tmp_path)
    results = tmp_path / "results"
    code, _, err = call_main(tiny_run_args(model, files, results))
    assert code == 2
    assert "one of WORLD_SIZE=2 processes" in err
    assert "accelerate launch --num_processes 1" in err
    assert not results.exists()


def test_accelerate_launch_single_process(tmp_path):
    model, files = write_tiny_inputs(tmp_path)
    results = tmp_path / "results"
    launcher = Path(sys.executable).with_name("accelerate")
    command = [str(launcher), "launch", "--num_processes", "1", "--num_machines", "1", "--cpu",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "nestbench",
               *tiny_run_args(model, files, results, *FAST_NEST)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    found = records_by_method(results)
    assert [r["status"] for r in found["none"] + found["nest"]] == ["success", "success"]


# Documentation


def test_scaling_doc_matches_estimates(capsys):
    sys.path.insert(0, str(REPO / "docs"))
    try:
        import memory_estimates
    finally:
        sys.path.pop(0)
    memory_estimates.main()
    table = capsys.readouterr().out.strip().splitlines()
    doc = (REPO / "docs" / "scaling.md").read_text()
    assert len(table) == 11
    for line in table:
        assert line in doc


def test_github_actions_example_runs_the_gate():
    import yaml

    workflow = yaml.safe_load((REPO / "docs" / "github-actions-nestbench.yml").read_text())
    steps = workflow["jobs"]["safety-gate"]["steps"]
    commands = "\n".join(step.get("run", "") for step in steps)
    assert "nestbench run --method nest --profile quick" in commands
    assert "nestbench check" in commands
    # The example uses the bounds of this project's own gate, so both move together.
    from ci_gate import CI_MAX_ASR, CI_MAX_UTILITY_DROP

    assert f"--max-asr {CI_MAX_ASR} --max-utility-drop {CI_MAX_UTILITY_DROP}" in commands
    uploads = [step for step in steps if step.get("uses", "").startswith("actions/upload-artifact")]
    assert "generations" not in uploads[0]["with"]["path"]


def test_slurm_executor_parameters(tmp_path, monkeypatch):
    # submitit's Slurm executor only checks that srun is on PATH when it is built; nothing is submitted here.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    srun = fake_bin / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    resources = JobResources(timeout_min=90, gpus_per_node=1, cpus_per_task=8, mem_gb=64, partition="gpu")
    executor = make_executor("slurm", tmp_path / "jobs", resources)
    parameters = executor._executor.parameters
    assert parameters["partition"] == "gpu"
    assert parameters["time"] == 90
    assert parameters["gpus_per_node"] == 1
    assert parameters["cpus_per_task"] == 8
    assert parameters["mem"] == "64GB"


def test_slurm_executor_without_slurm(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NestbenchError, match="cannot use the slurm executor.*--executor local"):
        make_executor("slurm", tmp_path / "jobs", JobResources())
