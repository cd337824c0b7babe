"""Settings of NeST (Neuron Selective Tuning). Defaults live here and only here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nestbench.config import require
from nestbench.methods.base import MethodConfig


@dataclass
class NestConfig(MethodConfig):
    # Selection: a neuron is a safety neuron when its probe weight's z-score within its
    # module exceeds z_threshold and the weight is positive.
    z_threshold: float = 3.0
    projections: tuple[str, ...] = ("gate_proj", "up_proj")

    # Probes: one logistic regression per module on max-pooled activations. "adam" is the
    # paper's full-batch Adam; "lbfgs" reaches the optimum of the same loss directly. On
    # SmolLM2-135M, 5,000 Adam epochs had not reached it: 20,000 epochs select exactly the
    # safety neurons that L-BFGS selects (bench/README.md).
    probe_solver: Literal["lbfgs", "adam"] = "lbfgs"
    probe_max_iter: int = 500
    probe_epochs: int = 5000
    probe_lr: float = 1e-3
    probe_weight_decay: float = 1e-3
    probe_seeds: int = 3
    probe_holdout: float = 0.2
    activation_batch_size: int = 16

    # Clustering of each module's safety neurons by their activation profiles.
    clustering: Literal["weak", "default", "strong"] = "default"
    k_max: int = 2
    cluster_features: Literal["raw", "standardized"] = "raw"
    min_silhouette: float = 0.1
    kmeans_n_init: int = 10

    # Training of the per-cluster update vectors U (zero-initialised).
    lr: float = 5e-2
    weight_decay: float = 0.0
    val_fraction: float = 0.05
    max_length: int = 256
    grad_clip: float | None = 1.0
    select_best: bool = True

    def __post_init__(self) -> None:
        require(self.z_threshold >= 0, f"z_threshold must be >= 0, got {self.z_threshold}; the paper uses 2 to 4")
        require(len(self.projections) > 0, "projections must name at least one FFN projection, e.g. [gate_proj, up_proj]")
        require(self.probe_epochs >= 1, f"probe_epochs must be >= 1, got {self.probe_epochs}")
        require(self.probe_lr > 0, f"probe_lr must be > 0, got {self.probe_lr}")
        require(self.probe_weight_decay >= 0, f"probe_weight_decay must be >= 0, got {self.probe_weight_decay}")
        require(self.probe_max_iter >= 1, f"probe_max_iter must be >= 1, got {self.probe_max_iter}")
        require(self.probe_seeds >= 1, f"probe_seeds must be >= 1, got {self.probe_seeds}")
        require(0 < self.probe_holdout < 1, f"probe_holdout must be in (0, 1), got {self.probe_holdout}")
        require(self.activation_batch_size >= 1, f"activation_batch_size must be >= 1, got {self.activation_batch_size}")
        require(self.k_max >= 1, f"k_max must be >= 1, got {self.k_max}; use 1 for one cluster per module")
        require(-1 <= self.min_silhouette <= 1, f"min_silhouette must be in [-1, 1], got {self.min_silhouette}")
        require(self.kmeans_n_init >= 1, f"kmeans_n_init must be >= 1, got {self.kmeans_n_init}")
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        require(0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        require(self.max_length >= 8, f"max_length must be >= 8 tokens, got {self.max_length}")
        require(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or null, got {self.grad_clip}")
