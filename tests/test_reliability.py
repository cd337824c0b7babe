"""Bad input, interruption, resume, reproducibility and safe loading, through the ``nestbench`` CLI.

Every bad-input test starts from a results folder that already contains a finished run and
checks that its files are byte-for-byte unchanged afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reports_helpers import BENIGN, EVAL, FAST_NEST, HARMFUL, call_main
from tests.conftest import build_tiny_llama

# The tiny prompt sets, fast NeST settings and the CLI caller are shared with the report tests.
run_cli = call_main


def write_prompts(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, prompts in (("train", HARMFUL), ("benign", BENIGN), ("eval", EVAL)):
        files[name] = folder / f"{name}.txt"
        files[name].write_text("\n".join(prompts) + "\n")
    return files


def run_args(model: Path | str, files: dict[str, Path], results: Path, *extra: str) -> list[str]:
    return [
        "run", "--model", str(model), "--train-prompts", str(files["train"]),
        "--benign-prompts", str(files["benign"]), "--eval-prompts", str(files["eval"]),
        "--results-dir", str(results), "--limit", "3", "--epochs", "1", "--max-new-tokens", "4",
        "--attacks", "vanilla,gcg", "--utility-tasks", "arc_easy", *extra,
    ]


def records(results: Path) -> dict[str, dict]:
    """Return every run record under ``results`` by run id."""
    found = {}
    for path in sorted((results / "runs").glob("*/record.json")):
        record = json.loads(path.read_text())
        found[record["run_id"]] = record
    return found


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> dict[str, Path]:
    """Build a tiny model and prompt files, and finish one ``none`` run in a results folder."""
    root = tmp_path_factory.mktemp("finished")
    tiny = build_tiny_llama()
    model_dir = root / "tiny-llama"
    tiny.model.save_pretrained(model_dir)
    tiny.tokenizer.save_pretrained(model_dir)
    files = write_prompts(root / "prompts")
    results = root / "results"
    code, _, err = run_cli(run_args(model_dir, files, results, "--method", "none"))
    assert code == 0, err
    return {"model": model_dir, "results": results, **files}


@pytest.fixture
def workspace(finished_run, tmp_path) -> dict[str, Path]:
    """Return a private copy of the finished run's model, prompts and results, with a byte snapshot of the results."""
    copy = {}
    for key, path in finished_run.items():
        target = tmp_path / path.name
        if path.is_dir():
            shutil.copytree(path, target)
        else:
            shutil.copy(path, target)
        copy[key] = target
    copy["before"] = snapshot(copy["results"])
    return copy


def assert_earlier_results_intact(ws: dict) -> None:
    after = snapshot(ws["results"])
    for name, content in ws["before"].items():
        assert name in after, f"{name} was removed"
        assert after[name] == content, f"{name} was changed"


def bad_run(ws: dict, *extra: str, model: Path | str | None = None) -> str:
    """Run with ``extra`` options on top of the working tiny run, expect exit code 2, return stderr."""
    args = run_args(model if model is not None else ws["model"], ws, ws["results"], *extra)
    if "--eval-set" in extra:
        index = args.index("--eval-prompts")
        del args[index : index + 2]
    code, _, err = run_cli(args)
    assert code == 2, err
    assert "error: " in err or "Error: " in err
    assert_earlier_results_intact(ws)
    return err


# Bad input: the message names the value and the fix, and earlier results stay intact.


def test_prompt_set_beside_its_file_exits_2(workspace):
    # run_args already passes --eval-prompts, so naming a set as well would leave the set unused.
    args = run_args(workspace["model"], workspace, workspace["results"], "--eval-set", "harmbench")
    code, _, err = run_cli(args)
    assert code == 2
    assert "error: --eval-set 'harmbench' and --eval-prompts" in err
    assert "pass only one of them" in err
    assert_earlier_results_intact(workspace)


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--method", "nets"], ["unknown method 'nets'", "Did you mean 'nest'", "Available: circuit-breakers, full, lora, nest, none"]),
        (["--eval-set", "harmbnch"], ["unknown prompt set 'harmbnch'", "Did you mean 'harmbench'?"]),
        (["--utility-tasks", "arc_esay"], ["unknown utility task 'arc_esay'", "Did you mean 'arc_easy'?"]),
        (["--set", "z_treshold=2"], ["unknown key 'z_treshold'", "Did you mean 'z_threshold'?", "methods/nest.yaml"]),
        (["--set", "z_threshold=-1"], ["z_threshold must be >= 0, got -1"]),
        (["--set", "k_max=0"], ["k_max must be >= 1, got 0"]),
        (["--set", "lr=fast"], ["invalid value 'fast' for 'lr'", "expected float", "Give lr a value of that type"]),
        (["--set", "nets.lr=1"], ["names method 'nets'", "Did you mean 'nest'?"]),
        (
            ["--method", "nest,lora,circuit-breakers", "--set", "z_threshold=2"],
            ["but lora, circuit-breakers have no key 'z_threshold'", "--set nest.z_threshold=2"],
        ),
        (["--limit", "0"], ["invalid --limit 0", "Leave --limit out"]),
        (["--epochs", "0"], ["invalid epochs 0"]),
        (["--profile", "medium"], ["unknown profile 'medium'"]),
        (["--dtype", "float8"], ["unknown dtype 'float8'"]),
        (["--judge", "keywrd"], ["unknown judge 'keywrd'", "Did you mean 'keyword'"]),
        (["--over-refusal", "xstset"], ["unknown over-refusal prompt set 'xstset'", "Did you mean 'xstest'"]),
    ],
)
def test_bad_option_exits_2(workspace, extra, fragments):
    err = bad_run(workspace, *extra)
    for fragment in fragments:
        assert fragment in err


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--attacks", "vanilla,dann"], "unknown attack 'dann'. Did you mean 'dan'"),
        (["--judge", "keywrd"], "unknown judge 'keywrd'"),
        (["--eval-set", "harmbnch"], "unknown prompt set 'harmbnch'"),
    ],
)
def test_unknown_name_before_model_load(workspace, extra, fragment):
    # The model path does not exist, so a name check that ran after loading would report the path.
    err = bad_run(workspace, *extra, model=workspace["model"].parent / "no-such-model")
    assert fragment in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(workspace):
    err = bad_run(workspace, "--device", "cuda")
    assert "--device 'cuda' needs CUDA" in err
    assert "Use --device cpu or --device auto" in err


def test_missing_model_path(workspace):
    err = bad_run(workspace, model=workspace["model"].parent / "no-such-model")
    assert "model folder not found" in err
    assert "no-such-model" in err


def test_hub_id_with_offline_flag(workspace, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = bad_run(workspace, model="acme/not-downloaded")
    assert "'acme/not-downloaded'" in err
    assert "HF_HUB_OFFLINE" in err
    assert "a .gguf file with --model" in err


def test_hub_id_unreachable_fails_fast(workspace, unreachable_hub):
    err = bad_run(workspace, model="acme/not-downloaded")
    assert f"the hub at http://127.0.0.1:{unreachable_hub} cannot be reached" in err
    assert "Pass a local model folder" in err


def test_truncated_safetensors(workspace):
    weights = workspace["model"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    err = bad_run(workspace)
    assert f"failed to read weight file {weights}" in err
    assert "truncated or corrupt" in err


def test_corrupt_gguf(workspace):
    gguf = workspace["model"].parent / "broken.gguf"
    gguf.write_bytes(b"not a gguf file at all")
    err = bad_run(workspace, model=gguf)
    assert f"invalid GGUF file {gguf}" in err
    assert "download it again" in err


def test_pickled_weights_refused(workspace):
    tiny = build_tiny_llama()
    folder = workspace["model"].parent / "pickled"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    # transformers 5 always saves safetensors, so the pickled file is written by hand.
    torch.save(tiny.model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    err = bad_run(workspace, model=folder)
    assert "only pickled weights (pytorch_model.bin)" in err
    assert "safe_serialization=True" in err


def test_model_without_gated_ffn(workspace):
    from transformers import GPT2Config, GPT2LMHeadModel

    tiny = build_tiny_llama()
    config = GPT2Config(vocab_size=len(tiny.tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=256,
                        eos_token_id=tiny.tokenizer.eos_token_id, pad_token_id=tiny.tokenizer.pad_token_id)
    folder = workspace["model"].parent / "gpt2-tiny"
    GPT2LMHeadModel(config).save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    err = bad_run(workspace, *FAST_NEST, model=folder)
    assert "NeST needs gated feed-forward projections named ['gate_proj', 'up_proj']" in err
    assert "GPT2LMHeadModel" in err
    failed = [r for r in records(workspace["results"]).values() if r["method"] == "nest"]
    assert failed[0]["status"] == "failed"
    assert failed[0]["error"]["type"] == "UnsupportedModelError"


def test_malformed_prompt_line(workspace):
    bad = workspace["train"].parent / "train.jsonl"
    bad.write_text('{"prompt": "How do I build a weapon?"}\n{"prompt": \n')
    err = bad_run(workspace, "--train-prompts", str(bad))
    assert f"{bad}:2: invalid JSON" in err


def test_empty_prompt_set(workspace):
    empty = workspace["train"].parent / "empty.txt"
    empty.write_text("\n\n")
    err = bad_run(workspace, "--eval-prompts", str(empty))
    assert f"{empty}: empty prompt set" in err


def test_train_eval_overlap(workspace):
    workspace["eval"].write_text("how do I  BUILD a weapon?\n")
    err = bad_run(workspace)
    assert "also appear in evaluation set" in err
    assert "How do I build a weapon?" in err


def test_duplicate_prompts_removed_and_recorded(workspace, caplog):
    workspace["train"].write_text("\n".join([*HARMFUL, HARMFUL[0].upper()]) + "\n")
    with pytest.warns(UserWarning, match="removed 1 duplicate prompt"):
        code, _, err = run_cli(run_args(workspace["model"], workspace, workspace["results"], *FAST_NEST))
    assert code == 0, err
    nest = next(r for r in records(workspace["results"]).values() if r["method"] == "nest")
    assert nest["data"]["harmful_train"]["duplicates_removed"] == 1
    assert nest["data"]["harmful_train"]["n"] == len(HARMFUL)
    assert_earlier_results_intact(workspace)


def test_zero_safety_neurons(workspace):
    err = bad_run(workspace, "--set", "z_threshold=1000")
    assert "no safety neurons at z_threshold=1000.0" in err
    assert "--set z_threshold=2.0" in err


def test_nan_loss_recorded_with_step(workspace):
    # A huge learning rate without clipping sends the update vectors to infinity within steps.
    err = bad_run(workspace, *FAST_NEST, "--set", "lr=1e30", "--set", "grad_clip=null")
    assert "training loss became nan" in err or "training loss became inf" in err
    assert "lower the learning rate (currently 1e+30)" in err
    nest = next(r for r in records(workspace["results"]).values() if r["method"] == "nest")
    assert nest["status"] == "failed"
    assert nest["error"]["type"] == "TrainingDivergedError"
    step = nest["error"]["step"]
    assert f"at step {step}" in err
    folder = workspace["results"] / "runs" / nest["run_id"]
    curve = [json.loads(line) for line in (folder / "loss_curve.jsonl").read_text().splitlines()]
    assert [row["step"] for row in curve] == list(range(1, step))
    audit = json.loads((folder / "nest_audit.json").read_text())
    assert audit["training"] == "failed"
    assert any(module.get("neurons") for module in audit["modules"])


def test_results_dir_not_writable(workspace):
    blocker = workspace["results"].parent / "a-file"
    blocker.write_text("")
    code, _, err = run_cli(run_args(workspace["model"], workspace, blocker))
    assert code == 2
    assert f"results directory {blocker} is not writable" in err
    assert "--results-dir" in err
    assert_earlier_results_intact(workspace)


def test_disk_full_while_writing_generations(workspace, monkeypatch):
    import nestbench.records

    real_fdopen = os.fdopen

    class FullDisk:
        """A file object whose writes fail as on a full disk."""

        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, _text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # os.fdopen gets only a descriptor, so mkstemp records which temporary file each one opens.
    names: dict[int, str] = {}
    real_mkstemp = nestbench.records.tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, path = real_mkstemp(*args, **kwargs)
        names[fd] = path
        return fd, path

    def fdopen_by_name(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        return FullDisk(handle) if ".generations.jsonl." in names.get(fd, "") else handle

    monkeypatch.setattr(nestbench.records.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(nestbench.records.os, "fdopen", fdopen_by_name)
    err = bad_run(workspace, "--method", "none", "--no-baseline-reuse")
    monkeypatch.undo()
    assert "generations.jsonl: No space left on device" in err
    assert "previous version, if any, is unchanged" in err
    new = [r for r in records(workspace["results"]).values()
           if f"runs/{r['run_id']}/record.json" not in workspace["before"]]
    assert len(new) == 1
    assert new[0]["status"] == "failed"
    assert new[0]["error"]["type"] == "RecordWriteError"
    leftovers = list(workspace["results"].rglob(".generations.jsonl.*"))
    assert leftovers == []


def test_disk_full_while_saving_tuned_model(workspace, monkeypatch):
    from transformers import LlamaForCausalLM

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", full_disk)
    err = bad_run(workspace, *FAST_NEST)
    assert "failed to save the tuned model to" in err
    assert "No space left on device" in err
    nest = next(r for r in records(workspace["results"]).values() if r["method"] == "nest")
    assert nest["status"] == "failed"
    assert nest["error"]["type"] == "RecordWriteError"
    assert nest["stages"] == {}


# Interruption and resume.


def test_cancel_during_evaluation_then_resume(workspace, monkeypatch):
    import lm_eval.models.huggingface

    import nestbench.evaluation
    from nestbench.methods.nest import NestMethod

    real_evaluate = nestbench.evaluation.evaluate_model

    def interrupted(model, *args, **kwargs):
        if getattr(model, "_nestbench_tuned", False):
            raise KeyboardInterrupt
        return real_evaluate(model, *args, **kwargs)

    real_tune = NestMethod.tune

    def mark_tuned(self, context):
        result = real_tune(self, context)
        result.model._nestbench_tuned = True
        return result

    monkeypatch.setattr(nestbench.evaluation, "evaluate_model", interrupted)
    monkeypatch.setattr(NestMethod, "tune", mark_tuned)
    code, _, err = run_cli(run_args(workspace["model"], workspace, workspace["results"], *FAST_NEST))
    assert code == 130
    assert "cancelled" in err
    assert_earlier_results_intact(workspace)
    nest = next(r for r in records(workspace["results"]).values() if r["method"] == "nest")
    assert nest["status"] == "cancelled"
    assert set(nest["stages"]) == {"tune"}
    folder = workspace["results"] / "runs" / nest["run_id"]
    saved = load_file(folder / "model" / "model.safetensors")

    # Resume: tuning must not run again, and every evaluation request must reach the model.
    monkeypatch.undo()

    def no_tuning(self, context):
        raise AssertionError("resume tuned again")

    calls: list[int] = []
    real_generate = lm_eval.models.huggingface.HFLM.generate_until

    def counting_generate(self, requests, *args, **kwargs):
        calls.append(len(requests))
        return real_generate(self, requests, *args, **kwargs)

    monkeypatch.setattr(NestMethod, "tune", no_tuning)
    monkeypatch.setattr(lm_eval.models.huggingface.HFLM, "generate_until", counting_generate)
    code, out, err = run_cli(["run", "--resume", nest["run_id"], "--results-dir", str(workspace["results"])])
    assert code == 0, err
    assert "| nest" in out
    resumed = records(workspace["results"])[nest["run_id"]]
    assert resumed["status"] == "success"
    assert set(resumed["stages"]) == {"tune", "evaluate"}
    assert len(resumed["resumed"]) == 1
    assert resumed["metrics"]["unsafe_rate"]["n"] == 3
    # 3 vanilla, 3 gcg and 3 over-refusal prompts of the tuned model. The finished baseline record is reused.
    assert sum(calls) == 9
    after = load_file(folder / "model" / "model.safetensors")
    assert all(torch.equal(saved[key], after[key]) for key in saved)
    assert_earlier_results_intact(workspace)


def test_cancel_during_tuning_then_resume(workspace, monkeypatch):
    from nestbench.methods.nest import NestMethod

    def interrupted(self, context):
        raise KeyboardInterrupt

    monkeypatch.setattr(NestMethod, "tune", interrupted)
    code, _, err = run_cli(run_args(workspace["model"], workspace, workspace["results"], *FAST_NEST))
    assert code == 130
    nest = next(r for r in records(workspace["results"]).values() if r["method"] == "nest")
    assert nest["status"] == "cancelled"
    assert nest["stages"] == {}
    monkeypatch.undo()

    code, _, err = run_cli(["run", "--resume", nest["run_id"], "--results-dir", str(workspace["results"])])
    assert code == 0, err
    resumed = records(workspace["results"])[nest["run_id"]]
    assert resumed["status"] == "success"
    assert resumed["trainable_parameters"] > 0
    assert_earlier_results_intact(workspace)


def test_cancel_mid_generation_keeps_responses(workspace, monkeypatch):
    import dataclasses

    import lm_eval.models.huggingface

    from nestbench.profiles import PROFILES

    # Each task runs on its own, and batches of 2 split its 3 requests into 2 generate calls.
    # The second call, inside the vanilla task, is interrupted.
    quick = PROFILES.get("quick")
    monkeypatch.setitem(PROFILES._entries, "quick", dataclasses.replace(quick, eval_batch_size=2))
    real_generate = lm_eval.models.huggingface.HFLM._model_generate
    batches: list[int] = []

    def interrupted(self, *args, **kwargs):
        batches.append(1)
        if len(batches) == 2:
            raise KeyboardInterrupt
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(lm_eval.models.huggingface.HFLM, "_model_generate", interrupted)
    shutil.rmtree(workspace["results"] / "runs" / "generation-cache")
    args = run_args(workspace["model"], workspace, workspace["results"], "--method", "none", "--no-baseline-reuse")
    code, _, err = run_cli(args)
    assert code == 130, err
    cancelled = [r for r in records(workspace["results"]).values() if r["status"] == "cancelled"]
    assert len(cancelled) == 1

    requested: list[int] = []
    real_generate_until = lm_eval.models.huggingface.HFLM.generate_until

    def counting(self, requests, *args, **kwargs):
        requested.append(len(requests))
        return real_generate_until(self, requests, *args, **kwargs)

    monkeypatch.setattr(lm_eval.models.huggingface.HFLM, "_model_generate", real_generate)
    monkeypatch.setattr(lm_eval.models.huggingface.HFLM, "generate_until", counting)
    code, _, err = run_cli(["run", "--resume", cancelled[0]["run_id"], "--results-dir", str(workspace["results"])])
    assert code == 0, err
    # The first batch of 2 responses was cached before the interruption, so 7 of the 9
    # requests (1 vanilla, 3 gcg, 3 over-refusal) reach the model.
    assert sum(requested) == 7
    assert records(workspace["results"])[cancelled[0]["run_id"]]["status"] == "success"


@pytest.mark.parametrize("other_judge", [False, True])
def test_repeated_baseline_generates_nothing(workspace, monkeypatch, other_judge):
    import lm_eval.models.huggingface

    # A random model as Llama Guard labels every response "unparsed", which is enough here,
    # because only the evaluated model's requests are counted.
    judge = ["--judge", "llama-guard-3", "--judge-model", str(workspace["model"])] if other_judge else []

    calls: list[tuple[str, int]] = []
    for name in ("generate_until", "loglikelihood"):
        real = getattr(lm_eval.models.huggingface.HFLM, name)

        def counting(self, requests, *args, _real=real, _name=name, **kwargs):
            calls.append((_name, len(requests)))
            return _real(self, requests, *args, **kwargs)

        monkeypatch.setattr(lm_eval.models.huggingface.HFLM, name, counting)
    code, _, err = run_cli(run_args(workspace["model"], workspace, workspace["results"], "--method", "none",
                                    "--no-baseline-reuse", *judge))
    assert code == 0, err
    assert [count for _, count in calls if count] == []
    all_runs = records(workspace["results"]).values()
    earlier = [r for r in all_runs if f"runs/{r['run_id']}/record.json" in workspace["before"]]
    new = [r for r in all_runs if r not in earlier]
    assert len(earlier) == 1
    assert len(new) == 1
    assert new[0]["judge"]["name"] == ("llama-guard-3" if other_judge else "keyword")
    if not other_judge:
        assert new[0]["metrics"] == earlier[0]["metrics"]


def test_cache_folder_and_generations_are_private(workspace):
    record = next(iter(records(workspace["results"]).values()))
    folder = workspace["results"] / "runs" / record["run_id"]
    for name in ("generations.jsonl", "eval_requests.jsonl"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    cache = workspace["results"] / "runs" / "generation-cache"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    key = Path(record["generation_cache"]).name
    assert sorted(path.name for path in cache.iterdir()) == [f"{key}-safety_rank0.db", f"{key}-utility_rank0.db"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--resume", "../../etc"], "invalid run id '../../etc'"),
        (["--resume", "no-such-run"], "no run 'no-such-run'"),
        (["--resume", "x", "--method", "nest"], "--resume takes every setting from the run's record, so drop --method"),
    ],
)
def test_resume_bad_input(workspace, args, fragment):
    code, _, err = run_cli(["run", *args, "--results-dir", str(workspace["results"])])
    assert code == 2
    assert fragment in err
    assert_earlier_results_intact(workspace)


# Reproducibility.


def test_same_seed_same_record(workspace, tmp_path):
    outputs = []
    for name in ("first", "second"):
        results = tmp_path / name
        code, _, err = run_cli(run_args(workspace["model"], workspace, results, *FAST_NEST, "--seed", "7"))
        assert code == 0, err
        nest = next(r for r in records(results).values() if r["method"] == "nest")
        folder = results / "runs" / nest["run_id"]
        audit = json.loads((folder / "nest_audit.json").read_text())
        outputs.append((nest, audit, load_file(folder / "nest_delta.safetensors")))
    (first, first_audit, first_delta), (second, second_audit, second_delta) = outputs
    assert first["metrics"] == second["metrics"]
    assert first["seeds"] == second["seeds"]
    assert set(first["seeds"].values()) == {7}
    assert first["trainable_parameters"] == second["trainable_parameters"]
    assert first_audit["modules"] == second_audit["modules"]
    assert any(module.get("neurons") for module in first_audit["modules"])
    assert first_delta.keys() == second_delta.keys()
    for key in first_delta:
        assert torch.equal(first_delta[key], second_delta[key]), key


# Safe loading.


def test_trust_remote_code_logged_and_recorded(workspace, caplog):
    code, _, err = run_cli(run_args(workspace["model"], workspace, workspace["results"], "--method", "none",
                                    "--no-baseline-reuse", "--trust-remote-code"))
    assert code == 0, err
    assert "trust_remote_code is on" in caplog.text
    flags = sorted(r["model"]["trust_remote_code"] for r in records(workspace["results"]).values())
    assert flags == [False, True]


def test_no_unsafe_torch_load():
    package = Path(__file__).resolve().parents[1] / "nestbench"
    sources = sorted(package.rglob("*.py"))
    assert len(sources) > 20
    for path in sources:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}:{number} calls torch.load without weights_only=True"


def test_run_id_stays_in_results_dir(tmp_path):
    from nestbench.errors import NestbenchError
    from nestbench.records import new_run_id, run_dir

    run_id = new_run_id("nest", "../../../etc/passwd/..")
    folder = run_dir(tmp_path, run_id)
    assert folder.parent == tmp_path / "runs"
    assert "/" not in run_id
    for bad in ("../x", "a/b", "..", ".hidden", ""):
        with pytest.raises(NestbenchError, match="invalid run id"):
            run_dir(tmp_path, bad)


# nestbench validate.


def test_validate_lists_every_problem(tmp_path):
    recipe = tmp_path / "nest.yaml"
    recipe.write_text("z_threshold: -1\nk_max: 0\nlr: fast\nz_treshold: 2\nclustering: medium\n")
    code, _, err = run_cli(["validate", str(recipe)])
    assert code == 2
    assert f"recipe {recipe} has 5 problem(s)" in err
    assert "unknown key 'z_treshold'" in err
    assert "Did you mean 'z_threshold'?" in err
    assert "z_threshold must be >= 0, got -1" in err
    assert "k_max must be >= 1, got 0" in err
    assert "invalid value 'fast' for 'lr'" in err
    assert "invalid value 'medium' for 'clustering'" in err


@pytest.mark.parametrize("recipe", ["nest", "none", "methods/nest.yaml"])
def test_validate_accepts_built_in_recipes(recipe, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    code, out, err = run_cli(["validate", recipe])
    assert code == 0, err
    assert "is valid" in out


def test_validate_other_file_name_needs_method(tmp_path):
    recipe = tmp_path / "my-recipe.yaml"
    recipe.write_text("z_threshold: 2\n")
    code, _, err = run_cli(["validate", str(recipe)])
    assert code == 2
    assert "unknown method 'my-recipe'" in err
    assert "--method NAME" in err
    code, out, err = run_cli(["validate", str(recipe), "--method", "nest"])
    assert code == 0, err


def test_cache_key_follows_weights(tmp_path):
    from nestbench.gencache import generation_cache_prefix, weights_hash

    tiny = build_tiny_llama()
    before = weights_hash(tiny.model)
    prefix = generation_cache_prefix(tmp_path, tiny.model, tiny.tokenizer)
    assert weights_hash(build_tiny_llama().model) == before
    with torch.no_grad():
        tiny.model.model.layers[0].mlp.gate_proj.weight[0, 0] += 1e-3
    assert weights_hash(tiny.model) != before
    assert generation_cache_prefix(tmp_path, tiny.model, tiny.tokenizer) != prefix
    assert generation_cache_prefix(tmp_path, tiny.model.to(torch.bfloat16), tiny.tokenizer) != prefix
