"""Compare the training step of NeST with LoRA (rank 1 and 8 on the FFN) and full fine-tuning.

Every set-up trains a copy of the same model on the same fixed batch with the step of
``nestbench.sft.train_sft``: forward with labels, backward, gradient clipping, AdamW step.
Step times are measured in this process with the set-ups interleaved step by step, so a
change in machine load affects all of them alike. The median is reported, as a ratio to
LoRA rank 1.

Peak memory is measured per set-up in a fresh subprocess, because torch's CPU allocations
are invisible to tracemalloc and a process's peak resident set size (RSS) never goes down.
The subprocess loads the model and builds the set-up, resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``), runs the steps and reads the peak (``VmHWM``). The figure is
that peak minus the RSS just before the first step: the memory the training steps add to
the loaded model (activations kept for backward, gradients, optimizer state).

NeST gets random safety neurons (``--neurons`` per module, in ``--clusters`` clusters) in
every gate and up projection, which is more modules than a real selection touches.

    OMP_NUM_THREADS=2 python bench/train_step.py
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import add_common_arguments, load, machine_description, median, positive_int, print_table, setup

SETUPS = ("nest", "lora-r1", "lora-r8", "full")
BASELINE = "lora-r1"
FFN_MODULES = ["gate_proj", "up_proj", "down_proj"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated set-ups from {', '.join(SETUPS)}; {BASELINE} is always added")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="sequences per step (default: 8, the quick profile's)")
    parser.add_argument("--seq-len", type=positive_int, default=128, help="tokens per sequence (default: 128)")
    parser.add_argument("--steps", type=positive_int, default=10, help="timed steps per set-up (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per set-up first (default: 2)")
    parser.add_argument("--neurons", type=positive_int, default=12, help="NeST safety neurons per projection (default: 12)")
    parser.add_argument("--clusters", type=positive_int, default=2, help="NeST clusters per projection (default: 2)")
    parser.add_argument("--memory", choices=("subprocess", "off"), default="subprocess", help="measure peak memory per set-up in a subprocess, or skip it")
    parser.add_argument("--memory-steps", type=positive_int, default=3, help="steps each memory subprocess runs (default: 3)")
    parser.add_argument("--worker", choices=SETUPS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setups = [name.strip() for name in args.setups.split(",") if name.strip()]
    unknown = [name for name in setups if name not in SETUPS]
    if unknown:
        parser.error(f"unknown set-up(s) {unknown}; choose from {', '.join(SETUPS)}")
    args.setup_names = [BASELINE] + [name for name in setups if name != BASELINE]
    if args.warmup < 0:
        parser.error(f"--warmup {args.warmup} is invalid; use 0 or more")
    return args


class Setup:
    """A model prepared for one training method, with its trainable parameters and optimizer."""

    def __init__(self, name: str, model, args: argparse.Namespace):
        self.name = name
        self.keep: list = []  # objects whose hooks must stay alive while the model trains
        self.model = self._prepare(name, model, args)
        self.params = [p for p in self.model.parameters() if p.requires_grad] + [
            p for module in self.keep for p in module.parameters() if p.requires_grad
        ]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=0.0)
        self.model.train()

    def _prepare(self, name: str, model, args):
        if name == "full":
            model.requires_grad_(True)
            return model
        if name.startswith("lora-r"):
            from peft import LoraConfig, get_peft_model

            rank = int(name.removeprefix("lora-r"))
            config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=FFN_MODULES, bias="none")
            return get_peft_model(model, config)
        return self._attach_nest(model, args)

    def _attach_nest(self, model, args):
        from nestbench.methods.nest.probes import find_ffn_projections
        from nestbench.methods.nest.update import ModuleSelection, NeuronUpdate

        model.requires_grad_(False)
        generator = torch.Generator().manual_seed(args.seed)
        param = next(model.parameters())
        for name, projection in find_ffn_projections(model, ("gate_proj", "up_proj")).items():
            count = min(args.neurons, projection.out_features)
            neurons = torch.randperm(projection.out_features, generator=generator)[:count].sort().values
            clusters = min(args.clusters, count)
            assignments = torch.arange(count) % clusters
            update = NeuronUpdate(ModuleSelection(name, neurons, assignments, clusters), projection.in_features, param.dtype, param.device)
            with torch.no_grad():
                update.update.normal_(std=1e-3, generator=generator)
            update.attach(projection)
            self.keep.append(update)
        return model

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)


def make_batch(vocab_size: int, args: argparse.Namespace, device) -> dict[str, torch.Tensor]:
    """Build a fixed batch: random tokens, loss on the second half of each sequence, as on a target response."""
    generator = torch.Generator().manual_seed(args.seed)
    input_ids = torch.randint(vocab_size, (args.batch_size, args.seq_len), generator=generator)
    labels = input_ids.clone()
    labels[:, : args.seq_len // 2] = -100
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": torch.ones_like(input_ids)}
    return {key: value.to(device) for key, value in batch.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup(args)
    if args.worker:
        print(json.dumps(measure_memory(args)))
        return 0

    loaded = load(args)
    batch = make_batch(loaded.model.config.vocab_size, args, loaded.device)
    setups = [Setup(name, copy.deepcopy(loaded.model), args) for name in args.setup_names]
    del loaded
    gc.collect()
    times: dict[str, list[float]] = {s.name: [] for s in setups}
    for index in range(args.warmup + args.steps):
        for s in setups:
            start = time.perf_counter()
            s.step(batch)
            if index >= args.warmup:
                times[s.name].append(time.perf_counter() - start)
    trainable = {s.name: s.trainable() for s in setups}
    del setups
    gc.collect()

    memory = {name: run_memory_worker(name, argv) for name in args.setup_names} if args.memory == "subprocess" else {}
    print_report(args, times, trainable, memory)
    return 0


def print_report(args, times, trainable, memory) -> None:
    base_time = median(times[BASELINE])
    rows = []
    for name in args.setup_names:
        step = median(times[name])
        row = {
            "set-up": name,
            "trainable params": f"{trainable[name]:,}",
            "median step (s)": f"{step:.3f}",
            f"step / {BASELINE}": f"{step / base_time:.2f}",
        }
        if memory:
            extra = memory[name]["peak_extra_mib"]
            row["peak extra memory (MiB)"] = f"{extra:.0f}"
            row[f"memory / {BASELINE}"] = f"{extra / memory[BASELINE]['peak_extra_mib']:.2f}"
        rows.append(row)
    print(f"machine: {machine_description()}")
    print(
        f"model: {args.model}; batch {args.batch_size} x {args.seq_len} tokens; {args.steps} timed steps after "
        f"{args.warmup} warm-up steps per set-up, interleaved; NeST: {args.neurons} neurons in "
        f"{args.clusters} clusters per gate/up projection; LoRA on {', '.join(FFN_MODULES)}"
    )
    if memory:
        measured_by = {m["measured_by"] for m in memory.values()}
        print(f"memory: peak RSS during {args.memory_steps} steps minus RSS before them, one subprocess per set-up ({', '.join(sorted(measured_by))})")
    print_table(rows, list(rows[0]))


def run_memory_worker(name: str, argv: list[str] | None) -> dict:
    """Run this script as a worker for one set-up and return the memory figures it prints."""
    command = [sys.executable, str(Path(__file__).resolve()), *(argv if argv is not None else sys.argv[1:]), "--worker", name]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker for {name} failed with exit code {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_memory(args: argparse.Namespace) -> dict:
    """Build one set-up in this process and return its peak extra RSS over ``--memory-steps`` steps."""
    loaded = load(args)
    batch = make_batch(loaded.model.config.vocab_size, args, loaded.device)
    s = Setup(args.worker, loaded.model, args)
    del loaded
    _release_free_memory()
    before = _status_kib("VmRSS")
    measured_by = "VmHWM after clear_refs" if _reset_peak_rss() else "ru_maxrss (includes the loading peak)"
    for _ in range(args.memory_steps):
        s.step(batch)
    if measured_by.startswith("VmHWM"):
        peak = _status_kib("VmHWM")
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"setup": args.worker, "rss_before_mib": before / 1024, "peak_mib": peak / 1024, "peak_extra_mib": (peak - before) / 1024, "measured_by": measured_by}


def _release_free_memory() -> None:
    gc.collect()
    try:
        # glibc keeps freed heap pages mapped; trimming returns them so RSS counts live memory.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
