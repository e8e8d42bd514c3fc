"""The frequency view of logits (paper Fig. 5): logit maps and their wavelet bands.

For one test image, each model's logit vector is reshaped to FiGKD's near-square map
(:func:`figkd.wavelets.logits_to_grid`, zero-padded) and split by one level of the 2D DWT
(:func:`figkd.wavelets.dwt2`, PyWavelets' convention) into LL, LH, HL and HH.  The figure
shows a row per model (teacher, KD student, FiGKD student) and a column per map/band; the
detail bands share one symmetric colour scale per column so magnitudes compare across rows.
Over the whole test split it also reports each student's detail distance to the teacher
(FiGKD's detail loss, ``sum_k mean (D_k^s - D_k^t)^2``), the quantity FiGKD trains down.

Everything plotted is saved beside the PNG (``.npz`` arrays and a ``.json`` copy), so the
numbers can be checked against PyWavelets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from figkd.analysis.runs import LoadedRun, forward_all
from figkd.wavelets import dwt2, logits_to_grid

BANDS = ("LL", "LH", "HL", "HH")


def logit_bands(
    logits: np.ndarray, wavelet: str = "haar", mode: str = "zero"
) -> dict[str, np.ndarray]:
    """``{"map": H x W, "LL": ..., "LH": ..., "HL": ..., "HH": ...}`` of one logit vector."""
    grid = logits_to_grid(torch.as_tensor(np.asarray(logits, dtype=np.float64)))
    ll, (lh, hl, hh) = dwt2(grid, wavelet, mode)
    return {
        "map": grid.numpy(),
        **{name: band.numpy() for name, band in zip(BANDS, (ll, lh, hl, hh), strict=True)},
    }


def detail_distance(
    student: np.ndarray, teacher: np.ndarray, wavelet: str = "haar", mode: str = "zero"
) -> float:
    """FiGKD's detail loss (mean reduction, 2D, one level) between two (N, C) logit arrays."""
    s = logits_to_grid(torch.as_tensor(student, dtype=torch.float64))
    t = logits_to_grid(torch.as_tensor(teacher, dtype=torch.float64))
    _, s_bands = dwt2(s, wavelet, mode)
    _, t_bands = dwt2(t, wavelet, mode)
    return float(sum(((a - b) ** 2).mean() for a, b in zip(s_bands, t_bands, strict=True)))


def frequency_figure(
    runs: Mapping[str, LoadedRun],
    out: str | Path,
    *,
    sample: int = 0,
    wavelet: str = "haar",
    mode: str = "zero",
    reference: str = "teacher",
) -> dict[str, Path]:
    """Write ``frequency.png``, ``frequency.npz`` and ``frequency.json`` into ``out``.

    ``runs`` maps a row label to a loaded run (all on the same test split); ``reference``
    names the row the others' detail distance is measured against.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(runs.values()))
    test = first.test
    if not 0 <= sample < len(test):
        raise ValueError(f"sample {sample} is outside the test split (0..{len(test) - 1})")
    everything = list(range(len(test)))
    outputs = {name: forward_all(run.model, test, everything) for name, run in runs.items()}
    label = int(next(iter(outputs.values()))["labels"][sample])
    class_names = getattr(test, "class_names", None) or test.classes

    arrays: dict[str, np.ndarray] = {"sample": np.asarray(sample), "label": np.asarray(label)}
    record: dict[str, Any] = {
        "sample": sample,
        "label": label,
        "class": str(class_names[label]),
        "wavelet": wavelet,
        "mode": mode,
        "models": {},
    }
    bands: dict[str, dict[str, np.ndarray]] = {}
    for name, result in outputs.items():
        logits = result["logits"][sample]
        bands[name] = logit_bands(logits, wavelet, mode)
        arrays[f"{name}__logits"] = logits
        for key, value in bands[name].items():
            arrays[f"{name}__{key}"] = value
        entry: dict[str, Any] = {
            "run_dir": str(runs[name].path),
            "predicted": int(np.argmax(logits)),
            "test_top1": float(100.0 * np.mean(result["logits"].argmax(1) == result["labels"])),
            "logits": logits.tolist(),
            "bands": {key: value.tolist() for key, value in bands[name].items()},
        }
        if reference in outputs and name != reference:
            entry["detail_distance_to_reference"] = detail_distance(
                result["logits"], outputs[reference]["logits"], wavelet, mode
            )
        record["models"][name] = entry
    record["grid"] = list(next(iter(bands.values()))["map"].shape)

    columns = ("map", *BANDS)
    fig, axes = plt.subplots(
        len(bands), len(columns), figsize=(2.6 * len(columns), 2.5 * len(bands)), squeeze=False
    )
    for j, column in enumerate(columns):
        values = np.stack([bands[n][column] for n in bands])
        if column in ("map", "LL"):
            vmin, vmax, cmap = float(values.min()), float(values.max()), "viridis"
        else:
            limit = float(np.abs(values).max()) or 1.0
            vmin, vmax, cmap = -limit, limit, "RdBu_r"
        for i, name in enumerate(bands):
            ax = axes[i, j]
            image = ax.imshow(bands[name][column], cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("logit map" if column == "map" else column)
            if j == 0:
                info = record["models"][name]
                text = f"{name}\npred {info['predicted']}"
                if "detail_distance_to_reference" in info:
                    text += f"\ndetail dist {info['detail_distance_to_reference']:.3g}"
                ax.set_ylabel(text, fontsize=9)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(
        f"logits of test image {sample} (class {label}: {record['class']}), {wavelet} DWT; "
        f"detail dist = FiGKD detail loss to the {reference} over the test split",
        fontsize=10,
    )
    fig.tight_layout()
    paths = {kind: out / f"frequency.{kind}" for kind in ("png", "npz", "json")}
    fig.savefig(paths["png"], dpi=110)
    plt.close(fig)
    np.savez(paths["npz"], **arrays)
    paths["json"].write_text(json.dumps(record, indent=1) + "\n")
    return paths
