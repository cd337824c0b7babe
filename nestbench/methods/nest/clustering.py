"""Step 5 of NeST: group each module's safety neurons by their activation profiles."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class Clustering:
    assignments: np.ndarray  # (n_neurons,) cluster id of each safety neuron, 0..k-1
    k: int
    silhouette: float | None  # None when k-means was not run or did not produce a valid score
    fallback: str | None = None  # why a single cluster was used in default mode, if it was


def cluster_neurons(
    profiles: np.ndarray,
    mode: str,
    k_max: int,
    features: str,
    min_silhouette: float,
    n_init: int,
    seed: int,
) -> Clustering:
    """Cluster safety neurons; ``profiles`` is (n_neurons, N prompts) of pooled activations.

    ``weak`` puts all neurons in one cluster and ``strong`` gives each neuron its own.
    ``default`` runs k-means for k in 2..k_max, picks k by silhouette score (ties go to the
    smaller k), and falls back to one cluster when the best score is below
    ``min_silhouette`` or k-means finds only one effective cluster.
    """
    n = profiles.shape[0]
    if n == 0:
        raise ValueError("cluster_neurons needs at least one safety neuron")
    if mode == "weak" or n == 1:
        return Clustering(np.zeros(n, dtype=np.int64), 1, None, "one neuron" if n == 1 and mode != "weak" else None)
    if mode == "strong":
        return Clustering(np.arange(n, dtype=np.int64), n, None)
    if mode != "default":
        raise ValueError(f"unknown clustering mode {mode!r}; use weak, default or strong")

    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler

    x = profiles.astype(np.float64)
    if features == "standardized":
        x = StandardScaler().fit_transform(x)

    best: tuple[float, int, np.ndarray] | None = None
    # silhouette_score needs 2 <= k <= n - 1.
    for k in range(2, min(k_max, n - 1) + 1):
        with warnings.catch_warnings():
            # Identical profiles make k-means find fewer distinct clusters than k; that case
            # is handled below as "one effective cluster".
            warnings.simplefilter("ignore")
            labels = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)
        if len(np.unique(labels)) < 2:
            continue
        score = float(silhouette_score(x, labels))
        if best is None or score > best[0]:
            best = (score, k, labels)

    if best is None:
        return Clustering(np.zeros(n, dtype=np.int64), 1, None, "one effective cluster")
    score, k, labels = best
    if score < min_silhouette:
        return Clustering(np.zeros(n, dtype=np.int64), 1, score, f"silhouette {score:.3f} < {min_silhouette}")
    # Renumber clusters 0..k-1 by first appearance so the assignment is canonical.
    _, canonical = np.unique(labels, return_inverse=True)
    return Clustering(canonical.astype(np.int64), int(canonical.max()) + 1, score)
