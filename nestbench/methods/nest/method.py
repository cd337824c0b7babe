"""NeST: probe for safety neurons, cluster them, train one update per cluster, fold it in."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nestbench.errors import NoSafetyNeuronsError
from nestbench.methods.base import Method, TuneContext, TuneResult, register_method
from nestbench.methods.nest.clustering import cluster_neurons
from nestbench.methods.nest.config import NestConfig
from nestbench.methods.nest.probes import (
    find_ffn_projections,
    pooled_activations,
    select_safety_neurons,
    train_probes,
)
from nestbench.methods.nest.update import ModuleSelection, NeuronUpdate, save_delta
from nestbench.sft import TrainSettings, train_sft

logger = logging.getLogger(__name__)


@register_method
class NestMethod(Method):
    """NeST: shared updates on probe-selected FFN safety neurons, folded into the weights."""

    name = "nest"
    config_class = NestConfig
    config: NestConfig

    def tune(self, context: TuneContext) -> TuneResult:
        cfg = self.config
        model, tokenizer, data = context.model, context.tokenizer, context.data
        timings: dict[str, float] = {}
        projections = find_ffn_projections(model, cfg.projections)
        d_model = next(iter(projections.values())).in_features

        # Steps 1-2: pooled activations on harmful (label 1) and benign (label 0) prompts.
        start = time.perf_counter()
        prompts = list(data.harmful) + list(data.benign)
        labels = torch.tensor([1] * len(data.harmful) + [0] * len(data.benign))
        activations = pooled_activations(model, tokenizer, prompts, projections, cfg.activation_batch_size)
        timings["activations"] = time.perf_counter() - start
        logger.info("pooled activations of %d prompts over %d modules in %.1f s", len(prompts), len(projections), timings["activations"])

        # Step 3: one probe per module. Projections may differ in width, so modules are
        # grouped by d_ff before their features are stacked.
        start = time.perf_counter()
        probe_weights, probe_accuracy = self._train_probes(activations, labels, context.seed)
        timings["probes"] = time.perf_counter() - start
        logger.info("trained %d probes in %.1f s (mean held-out accuracy %.3f)", len(probe_weights), timings["probes"], float(np.mean(list(probe_accuracy.values()))))

        # Steps 4-5: selection and clustering.
        start = time.perf_counter()
        selections, audit_modules = self._select_and_cluster(activations, probe_weights, probe_accuracy, context.seed)
        timings["clustering"] = time.perf_counter() - start
        if not selections:
            # NeST's published ablation tried thresholds 2 to 4, so the suggestion is at most 2.
            lower = max(0.0, min(2.0, round(cfg.z_threshold - 1.0, 1)))
            raise NoSafetyNeuronsError(
                f"no safety neurons at z_threshold={cfg.z_threshold}: no positive probe weight passed it in any of "
                f"the {len(projections)} modules. Lower the threshold (for example --set z_threshold={lower}) "
                f"or use more, and more varied, probe prompts."
            )
        del activations

        # Step 6: attach zero-initialised updates and freeze everything else.
        for param in model.parameters():
            param.requires_grad_(False)
        updates = {
            s.name: NeuronUpdate(s, d_model, next(model.parameters()).dtype, next(model.parameters()).device)
            for s in selections
        }
        for name, update in updates.items():
            update.attach(projections[name])
        trainable = sum(u.update.numel() for u in updates.values())
        logger.info("training %d parameters in %d modules", trainable, len(updates))

        # Step 7: supervised training of the U matrices only.
        settings = TrainSettings(
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            epochs=context.epochs,
            batch_size=context.batch_size,
            val_fraction=cfg.val_fraction,
            max_length=cfg.max_length,
            grad_clip=cfg.grad_clip,
            seed=context.seed,
            select_best=cfg.select_best,
        )
        audit_path = context.work_dir / "nest_audit.json"
        try:
            stats = train_sft(model, tokenizer, data.examples(), [u.update for u in updates.values()], settings)
        except BaseException:
            for update in updates.values():
                update.detach()
            # The selection and clustering stay useful after a failed training, so they are kept.
            audit_path.write_text(json.dumps({"config": cfg.to_dict(), "training": "failed", "modules": audit_modules},
                                             indent=2))
            raise
        timings["training"] = stats.seconds

        # Step 8: fold the updates into the weights, which leaves a plain model.
        start = time.perf_counter()
        delta_path = context.work_dir / "nest_delta.safetensors"
        save_delta(delta_path, updates, {"z_threshold": cfg.z_threshold, "clustering": cfg.clustering})
        for name, update in updates.items():
            update.fold(projections[name])
        for param in model.parameters():
            param.requires_grad_(True)
        timings["fold"] = time.perf_counter() - start

        report = self._audit(audit_modules, trainable, stats, timings)
        audit_path.write_text(json.dumps(report, indent=2))
        return TuneResult(
            model=model,
            trainable_parameters=trainable,
            report=report["totals"] | {"timings": timings},
            artifacts={"delta": str(delta_path), "audit": str(audit_path)},
            loss_curve=stats.loss_curve,
            modified_parameters=tuple(f"{name}.weight" for name in updates),
        )

    def _train_probes(
        self, activations: dict[str, torch.Tensor], labels: torch.Tensor, seed: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        cfg = self.config
        groups: dict[int, list[str]] = {}
        for name, h in activations.items():
            groups.setdefault(h.shape[1], []).append(name)
        weights: dict[str, torch.Tensor] = {}
        accuracy: dict[str, float] = {}
        for names in groups.values():
            stacked = torch.stack([activations[n] for n in names])
            result = train_probes(
                stacked,
                labels,
                solver=cfg.probe_solver,
                max_iter=cfg.probe_max_iter,
                epochs=cfg.probe_epochs,
                lr=cfg.probe_lr,
                weight_decay=cfg.probe_weight_decay,
                seeds=cfg.probe_seeds,
                holdout=cfg.probe_holdout,
                seed=seed,
            )
            for i, name in enumerate(names):
                weights[name] = result.weights[i]
                accuracy[name] = float(result.holdout_accuracy[i])
        return weights, accuracy

    def _select_and_cluster(self, activations, probe_weights, probe_accuracy, seed: int):
        cfg = self.config
        selections: list[ModuleSelection] = []
        audit: list[dict[str, Any]] = []
        for name, weights in probe_weights.items():
            neurons = select_safety_neurons(weights, cfg.z_threshold)
            entry: dict[str, Any] = {
                "module": name,
                "probe_holdout_accuracy": probe_accuracy[name],
                "safety_neurons": int(len(neurons)),
                "k": 0,
                "silhouette": None,
            }
            if len(neurons):
                profiles = activations[name][:, neurons].T.numpy()
                clusters = cluster_neurons(
                    profiles, cfg.clustering, cfg.k_max, cfg.cluster_features, cfg.min_silhouette, cfg.kmeans_n_init, seed
                )
                selections.append(ModuleSelection(name, neurons, torch.from_numpy(clusters.assignments), clusters.k))
                entry.update(
                    k=clusters.k,
                    silhouette=clusters.silhouette,
                    fallback=clusters.fallback,
                    neurons=neurons.tolist(),
                    assignments=clusters.assignments.tolist(),
                )
            audit.append(entry)
        return selections, audit

    def _audit(self, modules, trainable: int, stats, timings) -> dict[str, Any]:
        with_neurons = [m for m in modules if m["safety_neurons"]]
        total_neurons = sum(m["safety_neurons"] for m in modules)
        return {
            "config": self.config.to_dict(),
            "totals": {
                "modules": len(modules),
                "modules_with_safety_neurons": len(with_neurons),
                "safety_neurons": total_neurons,
                "update_vectors": sum(m["k"] for m in modules),
                "trainable_parameters": trainable,
                "mean_probe_holdout_accuracy": float(np.mean([m["probe_holdout_accuracy"] for m in modules])),
                "best_val_loss": stats.best_val_loss,
                "best_epoch": stats.best_epoch,
                "steps": stats.steps,
            },
            "timings": timings,
            "modules": modules,
        }
