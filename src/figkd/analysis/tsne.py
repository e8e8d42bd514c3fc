"""t-SNE of student embeddings (paper Fig. 6).

The embedding is the input of each model's classifier, ``forward_features(x)["embedding"]``,
on test images of the first ``classes`` classes (label order, up to ``per_class`` images
each).  Each model gets its own 2D map from scikit-learn's ``TSNE`` (PCA initialisation,
so the map barely depends on ``random_state``: a deterministic picture, not one draw of
many); the silhouette score of the embedding by true class is reported
beside it as a number that does not depend on the projection.  Embeddings, coordinates and
labels are saved beside the PNG (``tsne.npz``, ``tsne.json``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from figkd.analysis.runs import LoadedRun, forward_all


def pick_indices(targets: list[int], classes: int, per_class: int) -> list[int]:
    """The first ``per_class`` test indices of each of the labels ``0 .. classes-1``."""
    taken: dict[int, int] = {}
    chosen = []
    for index, label in enumerate(targets):
        label = int(label)
        if label < classes and taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            chosen.append(index)
    return chosen


def tsne_2d(
    embedding: np.ndarray, perplexity: float = 30.0, seed: int = 0, threads: int = 1
) -> np.ndarray:
    """2D t-SNE; ``threads`` caps OpenMP/BLAS (on shared cores, 2 spinning OpenMP threads
    made a 12-point t-SNE take 40 s instead of 0.05 s)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = min(perplexity, max(1.0, (len(embedding) - 1) / 3))
    with threadpool_limits(limits=threads):
        return TSNE(
            n_components=2,
            perplexity=perplexity,
            init="pca",
            learning_rate="auto",
            random_state=seed,
        ).fit_transform(embedding)


def tsne_figure(
    runs: Mapping[str, LoadedRun],
    out: str | Path,
    *,
    classes: int = 10,
    per_class: int = 50,
    perplexity: float = 30.0,
    seed: int = 0,
    threads: int = 1,
) -> dict[str, Path]:
    """Write ``tsne.png``, ``tsne.npz`` and ``tsne.json`` into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import silhouette_score

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    test = next(iter(runs.values())).test
    indices = pick_indices(list(test.targets), classes, per_class)
    if len(indices) < 3:
        raise ValueError(f"too few test images for a t-SNE ({len(indices)})")
    arrays: dict[str, np.ndarray] = {"indices": np.asarray(indices)}
    record: dict[str, Any] = {
        "classes": classes,
        "per_class": per_class,
        "perplexity": perplexity,
        "seed": seed,
        "models": {},
    }
    maps = {}
    labels = None
    for name, run in runs.items():
        result = forward_all(run.model, test, indices)
        labels = result["labels"]
        coords = tsne_2d(result["embedding"], perplexity, seed, threads)
        maps[name] = coords
        arrays[f"{name}__embedding"] = result["embedding"]
        arrays[f"{name}__tsne"] = coords
        score = (
            float(silhouette_score(result["embedding"], labels))
            if 1 < len(set(labels.tolist())) < len(labels)  # else sklearn raises
            else float("nan")
        )
        record["models"][name] = {"run_dir": str(run.path), "silhouette": score}
    assert labels is not None
    arrays["labels"] = labels
    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps), 4.2), squeeze=False)
    cmap = plt.get_cmap("tab10" if classes <= 10 else "tab20")
    for ax, (name, coords) in zip(axes[0], maps.items(), strict=True):
        ax.scatter(coords[:, 0], coords[:, 1], c=labels % cmap.N, cmap=cmap, s=8, vmin=0,
                   vmax=cmap.N - 1)
        ax.set_title(f"{name} (silhouette {record['models'][name]['silhouette']:.3f})")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"t-SNE of embeddings: {len(indices)} test images of the first {classes} classes",
        fontsize=10,
    )
    fig.tight_layout()
    paths = {"png": out / "tsne.png", "npz": out / "tsne.npz", "json": out / "tsne.json"}
    fig.savefig(paths["png"], dpi=110)
    plt.close(fig)
    np.savez(paths["npz"], allow_pickle=False, **arrays)
    paths["json"].write_text(json.dumps(record, indent=1) + "\n")
    return paths
