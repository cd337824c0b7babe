"""Steps 6 and 8 of NeST: the shared per-cluster update, its fold into the weights, and the delta file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass
class ModuleSelection:
    """Safety neurons of one projection and their cluster assignment."""

    name: str  # module path, e.g. model.layers.3.mlp.gate_proj
    neurons: torch.Tensor  # (n,) row indices into the projection's weight
    assignments: torch.Tensor  # (n,) cluster id per neuron, 0..k-1
    k: int


class NeuronUpdate(nn.Module):
    """Trainable rows ``U`` (k, d_model) added to the weight rows of a projection's safety neurons.

    While attached, the projection computes ``x @ W.T`` as usual and then adds
    ``x @ U[assignments].T`` into the safety-neuron output channels in place, which equals
    using ``W[neurons] + U[assignments]`` without materialising a changed copy of ``W``.
    """

    def __init__(self, selection: ModuleSelection, d_model: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.selection = selection
        self.register_buffer("neurons", selection.neurons.to(device))
        self.register_buffer("assignments", selection.assignments.to(device))
        # Zero initialisation: training starts exactly at the base model.
        self.update = nn.Parameter(torch.zeros(selection.k, d_model, dtype=dtype, device=device))
        self._handle = None

    def attach(self, projection: nn.Linear) -> None:
        self._handle = projection.register_forward_hook(self._hook)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, _module, inputs, output):
        delta = inputs[0] @ self.update[self.assignments].T  # (..., n_neurons)
        # The Linear's output is not saved for its own backward, so adding in place is safe
        # and avoids a copy of the full (batch, seq, d_ff) activation.
        output.index_add_(-1, self.neurons, delta.to(output.dtype))
        return output

    @torch.no_grad()
    def fold(self, projection: nn.Linear) -> None:
        """Add ``U[assignments]`` into the projection's weight rows once, then detach."""
        projection.weight.index_add_(0, self.neurons, self.update[self.assignments].to(projection.weight.dtype))
        self.detach()


def save_delta(path: Path, updates: dict[str, NeuronUpdate], metadata: dict) -> None:
    """Write the selected neurons, assignments and ``U`` matrices as one safetensors file."""
    from safetensors.torch import save_file

    tensors = {}
    for name, update in updates.items():
        tensors[f"{name}.neurons"] = update.neurons.detach().cpu().contiguous()
        tensors[f"{name}.assignments"] = update.assignments.detach().cpu().contiguous()
        tensors[f"{name}.update"] = update.update.detach().cpu().contiguous()
    save_file(tensors, str(path), metadata={"nestbench": json.dumps(metadata)})


@torch.no_grad()
def apply_delta(model: nn.Module, path: Path) -> int:
    """Fold a saved delta into ``model``'s weights; returns the number of modules changed."""
    from safetensors import safe_open

    modules = dict(model.named_modules())
    changed = 0
    with safe_open(str(path), framework="pt") as handle:
        names = sorted({key.rsplit(".", 1)[0] for key in handle.keys()})
        for name in names:
            if name not in modules:
                raise KeyError(f"delta names module {name!r}, which this model does not have")
            weight = modules[name].weight
            neurons = handle.get_tensor(f"{name}.neurons").to(weight.device)
            assignments = handle.get_tensor(f"{name}.assignments").to(weight.device)
            update = handle.get_tensor(f"{name}.update").to(weight.device, weight.dtype)
            weight.index_add_(0, neurons, update[assignments])
            changed += 1
    return changed
