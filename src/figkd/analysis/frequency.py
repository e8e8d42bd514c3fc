"""The frequency view of logits (paper Figs. 2 and 5): logit maps, wavelet bands, components.

For one test image, each model's logit vector is reshaped to FiGKD's near-square map
(:func:`figkd.wavelets.logits_to_grid`, zero-padded) and split by one level of the 2D DWT
(:func:`figkd.wavelets.dwt2`, PyWavelets' convention) into LL, LH, HL and HH.

- ``frequency.png``: a row per model (teacher, KD student, FiGKD student) and a column per
  map/band; the detail bands share one symmetric colour scale per column so magnitudes
  compare across rows.
- ``frequency_components.png``: the paper's view.  The inverse DWT of LL alone and of the
  detail bands alone gives each model's *low* and *high* component back in class space
  (``low + high == logits``), drawn as bars over the classes beside the logits, with the
  true class marked.  The paper's observation is that a strong model's high component alone
  often still peaks at the true class; over the whole test split the record gives each
  model's top-1 from the high component alone and from the low component alone.

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
from figkd.wavelets import dwt2, grid_to_logits, idwt2, logits_to_grid

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


def logit_components(
    logits: np.ndarray, wavelet: str = "haar", mode: str = "zero"
) -> dict[str, np.ndarray]:
    """``{"low": ..., "high": ...}``: the class-space parts of ``(..., C)`` logits rebuilt
    from LL alone and from the three detail bands alone; they add up to the logits."""
    x = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    grid = logits_to_grid(x)
    height, width = grid.shape[-2:]
    ll, bands = dwt2(grid, wavelet, mode)
    no_detail = tuple(torch.zeros_like(band) for band in bands)

    def back(coeffs: tuple[torch.Tensor, tuple[torch.Tensor, ...]]) -> np.ndarray:
        rebuilt = idwt2(coeffs, wavelet, mode)[..., :height, :width]  # pywt's crop for odd sides
        return grid_to_logits(rebuilt, x.shape[-1]).numpy()

    return {"low": back((ll, no_detail)), "high": back((torch.zeros_like(ll), bands))}


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
    components: dict[str, dict[str, np.ndarray]] = {}
    for name, result in outputs.items():
        logits = result["logits"][sample]
        bands[name] = logit_bands(logits, wavelet, mode)
        arrays[f"{name}__logits"] = logits
        for key, value in bands[name].items():
            arrays[f"{name}__{key}"] = value
        parts = logit_components(result["logits"], wavelet, mode)  # every test image
        components[name] = {key: value[sample] for key, value in parts.items()}
        for key, value in components[name].items():
            arrays[f"{name}__{key}"] = value
        labels = result["labels"]
        entry: dict[str, Any] = {
            "run_dir": str(runs[name].path),
            "predicted": int(np.argmax(logits)),
            "predicted_low": int(np.argmax(components[name]["low"])),
            "predicted_high": int(np.argmax(components[name]["high"])),
            "test_top1": float(100.0 * np.mean(result["logits"].argmax(1) == labels)),
            "test_top1_low_only": float(100.0 * np.mean(parts["low"].argmax(1) == labels)),
            "test_top1_high_only": float(100.0 * np.mean(parts["high"].argmax(1) == labels)),
            "logits": logits.tolist(),
            "bands": {key: value.tolist() for key, value in bands[name].items()},
            "components": {key: value.tolist() for key, value in components[name].items()},
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
    paths["components_png"] = out / "frequency_components.png"
    _components_figure(outputs, components, record, paths["components_png"], plt)
    np.savez(paths["npz"], allow_pickle=False, **arrays)
    paths["json"].write_text(json.dumps(record, indent=1) + "\n")
    return paths


def _components_figure(
    outputs: Mapping[str, Any],
    components: Mapping[str, Mapping[str, np.ndarray]],
    record: Mapping[str, Any],
    path: Path,
    plt: Any,
) -> None:
    """Bars over the classes: logits, low component, high component; the true class in red."""
    label = record["label"]
    columns = ("logits", "low", "high")
    fig, axes = plt.subplots(
        len(outputs), 3, figsize=(13, 2.4 * len(outputs)), squeeze=False, sharex=True
    )
    for i, name in enumerate(outputs):
        info = record["models"][name]
        series = {"logits": np.asarray(info["logits"]), **components[name]}
        for j, column in enumerate(columns):
            ax = axes[i, j]
            values = series[column]
            colours = ["tab:red" if c == label else "tab:gray" for c in range(len(values))]
            ax.bar(np.arange(len(values)), values, color=colours, width=1.0)
            ax.axhline(0.0, color="black", linewidth=0.5)
            top = int(np.argmax(values))
            accuracy = {"logits": info["test_top1"], "low": info["test_top1_low_only"],
                        "high": info["test_top1_high_only"]}[column]
            mark = "correct" if top == label else "wrong"
            ax.set_title(f"{name}: {column}, argmax {top} ({mark}); test top-1 {accuracy:.1f}",
                         fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("class")
    fig.suptitle(
        f"test image {record['sample']} (true class {label}: {record['class']}, red): logits = "
        f"low + high component (inverse {record['wavelet']} DWT of LL / of LH, HL, HH)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
