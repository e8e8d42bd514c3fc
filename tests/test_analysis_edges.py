"""Edge cases of the analysis figures: ``figkd.analysis.frequency`` (Fig. 5), ``.tsne``
(Fig. 6) and ``.runs`` (run folders), checked without training anything.

The figure tests use "table" models: test image ``i`` is the 1-element tensor ``[i]`` and the
model looks up fixed logits/embeddings for it, so every number that is plotted or saved is
known in advance.  Expected values come from PyWavelets (``pywt.dwt2``/``pywt.idwt2``),
scikit-learn (``TSNE``, ``silhouette_score``), NumPy, or small cases worked out by hand.

Padding (what ``frequency`` does to a logit vector before the DWT): the C logits are
zero-padded *at the end* to H * W = ceil(sqrt(C)) * ceil(C / H) entries and laid out
row-major; the Haar DWT in ``mode="zero"`` then extends an odd side by one zero row/column,
as ``pywt.dwt2(..., "haar", mode="zero")`` does.  ``_padded_map`` below is that first step.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pywt
import torch
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image
from torch import nn

from figkd.analysis import frequency, tsne
from figkd.analysis.runs import LoadedRun, forward_all, load_run, read_run_config
from figkd.config import config_from_dict, save_config

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- helpers


class TableModel(nn.Module):
    """``forward_features`` of image ``[i]`` is row ``i`` of fixed logits and embeddings."""

    def __init__(self, logits: np.ndarray, embedding: np.ndarray | None = None) -> None:
        super().__init__()
        self.logits = torch.as_tensor(logits, dtype=torch.float64)
        rows = len(logits)
        self.embedding = torch.as_tensor(
            embedding if embedding is not None else np.zeros((rows, 2)), dtype=torch.float64
        )

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        index = images[:, 0].long()
        return {"logits": self.logits[index], "embedding": self.embedding[index]}


class TableSplit:
    """A test split of ``len(targets)`` images ``[i]`` with labels ``targets``."""

    def __init__(self, targets: list[int], classes: list[str], names: list[str] | None = None):
        self.targets = list(targets)
        self.classes = classes
        if names is not None:
            self.class_names = names

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([float(index)]), self.targets[index]


def _run(path: Path, split: TableSplit, logits: np.ndarray, embedding: Any = None) -> LoadedRun:
    return LoadedRun(path, None, TableModel(logits, embedding), split)  # type: ignore[arg-type]


def _table(run: LoadedRun) -> TableModel:
    """The table model of a run made by ``_run``."""
    assert isinstance(run.model, TableModel)
    return run.model


class FigureRecorder:
    """Keeps every figure saved through ``Figure.savefig`` (it still writes the file)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.saved: dict[str, Figure] = {}
        original = Figure.savefig

        def savefig(figure: Figure, path: Any, *args: Any, **kwargs: Any) -> None:
            self.saved[Path(path).name] = figure
            original(figure, path, *args, **kwargs)

        monkeypatch.setattr(Figure, "savefig", savefig)


def _padded_map(logits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Row-major H x W map of ``logits`` zero-padded at the end (FiGKD's layout)."""
    height, width = shape
    return np.pad(logits, (0, height * width - logits.size)).reshape(height, width)


def _pywt_parts(logits: np.ndarray, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Bands of the padded map and the class-space low/high parts, all by PyWavelets."""
    ll, (lh, hl, hh) = pywt.dwt2(_padded_map(logits, shape), "haar", mode="zero")
    zero = np.zeros_like(ll)
    height, width = shape
    low = pywt.idwt2((ll, (zero, zero, zero)), "haar", mode="zero")[:height, :width]
    high = pywt.idwt2((zero, (lh, hl, hh)), "haar", mode="zero")[:height, :width]
    return {
        "LL": ll, "LH": lh, "HL": hl, "HH": hh,
        "low": low.reshape(-1)[: logits.size], "high": high.reshape(-1)[: logits.size],
    }


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


# Five classes -> H = ceil(sqrt(5)) = 3, W = ceil(5 / 3) = 2: one zero pad cell, and an odd
# number of rows, so PyWavelets adds one more zero row: bands are 2 x 1.
GRID5 = (3, 2)
TARGETS5 = [0, 1, 2, 3, 4, 0, 2]
NAMES5 = ["zero", "one", "two", "three", "four"]


def _three_rows(folder: Path) -> dict[str, LoadedRun]:
    """Teacher, KD and FiGKD rows on one 7-image, 5-class split (float64 logits)."""
    split = TableSplit(TARGETS5, [f"c{k}" for k in range(5)], NAMES5)
    generator = np.random.default_rng(5)
    rows = {}
    for k, name in enumerate(("teacher", "kd", "figkd")):
        logits = generator.normal(size=(7, 5)) * (1 + k)
        rows[name] = _run(folder / name, split, logits)
    return rows


class Drawn:
    """One ``frequency_figure`` call on the three rows (test image 3), shared by the tests
    of its record and its two figures: rows, written paths, figures by file name."""

    def __init__(
        self, rows: dict[str, LoadedRun], paths: dict[str, Path], saved: dict[str, Figure]
    ):
        self.rows, self.paths, self.figures = rows, paths, saved
        self.arrays = np.load(paths["npz"])
        self.record = json.loads(paths["json"].read_text())


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> Drawn:
    base = tmp_path_factory.mktemp("frequency")
    rows = _three_rows(base)
    with pytest.MonkeyPatch.context() as patch:
        recorder = FigureRecorder(patch)
        paths = frequency.frequency_figure(rows, base / "a" / "b", sample=3)  # parents made
    return Drawn(rows, paths, recorder.saved)


# ------------------------------------------------------------------ frequency: the numbers


def test_logit_components_of_one_vector_match_pywavelets() -> None:
    """A single (C,) vector, not only (N, C) batches: low/high are pywt.idwt2 of LL alone and
    of the detail bands alone, cropped to the map and the C classes; they add up to the
    logits.  (Expected: PyWavelets on the hand-padded 3 x 2 map.)"""
    logits = np.array([3.0, -1.0, 2.0, 0.5, 4.0])
    parts = frequency.logit_components(logits)
    want = _pywt_parts(logits, GRID5)
    assert parts["low"].shape == (5,) and parts["high"].shape == (5,)
    np.testing.assert_allclose(parts["low"], want["low"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(parts["high"], want["high"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(parts["low"] + parts["high"], logits, rtol=0, atol=1e-12)
    # by hand: map [[3, -1], [2, .5], [4, 0]] + a zero row; LL of the first block is
    # (3 - 1 + 2 + .5) / 2 = 2.25, and the low part repeats LL / 2 over the block: 1.125
    np.testing.assert_allclose(parts["low"][:4], [1.125] * 4, rtol=0, atol=1e-12)


def test_logit_bands_of_one_vector_match_pywavelets() -> None:
    """``logit_bands``: the zero-padded row-major map and pywt.dwt2's four bands of it."""
    logits = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    bands = frequency.logit_bands(logits)
    np.testing.assert_array_equal(bands["map"], [[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
    want = _pywt_parts(logits, GRID5)
    for band in frequency.BANDS:
        np.testing.assert_allclose(bands[band], want[band], rtol=0, atol=1e-12)


def test_detail_distance_is_the_mean_squared_band_difference() -> None:
    """sum over LH, HL, HH of mean((D_s - D_t)^2), each band by pywt over the N images."""
    generator = np.random.default_rng(0)
    student, teacher = generator.normal(size=(2, 4, 5))
    want = 0.0
    for s_row_bands, t_row_bands in [
        (pywt.dwt2(np.stack([_padded_map(r, GRID5) for r in student]), "haar", mode="zero"),
         pywt.dwt2(np.stack([_padded_map(r, GRID5) for r in teacher]), "haar", mode="zero"))
    ]:
        for s_band, t_band in zip(s_row_bands[1], t_row_bands[1], strict=True):
            want += float(np.mean((s_band - t_band) ** 2))
    assert frequency.detail_distance(student, teacher) == pytest.approx(want, rel=1e-12)


def test_frequency_record_matches_pywavelets_and_numpy(drawn: Drawn) -> None:
    """Every saved number of ``frequency_figure`` for test image 3 of 7: bands and components
    (PyWavelets), top-1 of the logits and of each component over the split (NumPy argmax),
    each student's detail distance to the teacher (pywt over all 7 images), the class name
    from ``class_names`` (not ``classes``)."""
    three_rows, arrays, record = drawn.rows, drawn.arrays, drawn.record
    assert record["sample"] == 3 and record["label"] == 3 and record["class"] == "three"
    assert record["grid"] == [3, 2]
    assert int(arrays["label"]) == 3 and int(arrays["sample"]) == 3
    labels = np.asarray(TARGETS5)
    teacher_all = _table(three_rows["teacher"]).logits.numpy()
    for name, run in three_rows.items():
        table = _table(run).logits.numpy()
        parts_all = [_pywt_parts(row, GRID5) for row in table]
        want = parts_all[3]
        info = record["models"][name]
        np.testing.assert_array_equal(arrays[f"{name}__logits"], table[3])
        np.testing.assert_array_equal(arrays[f"{name}__map"], _padded_map(table[3], GRID5))
        for key in (*frequency.BANDS, "low", "high"):
            np.testing.assert_allclose(arrays[f"{name}__{key}"], want[key], rtol=0, atol=1e-12)
        for band in frequency.BANDS:
            np.testing.assert_allclose(info["bands"][band], want[band], rtol=0, atol=1e-12)
        for part in ("low", "high"):
            np.testing.assert_allclose(info["components"][part], want[part], rtol=0, atol=1e-12)
        assert info["predicted"] == int(np.argmax(table[3]))
        assert info["predicted_low"] == int(np.argmax(want["low"]))
        assert info["predicted_high"] == int(np.argmax(want["high"]))
        low = np.stack([p["low"] for p in parts_all])
        high = np.stack([p["high"] for p in parts_all])
        for key, values in (("", table), ("_low_only", low), ("_high_only", high)):
            hits = int(sum(int(np.argmax(v) == y) for v, y in zip(values, labels, strict=True)))
            assert info[f"test_top1{key}"] == pytest.approx(100.0 * hits / 7, abs=1e-9), key
        if name == "teacher":
            assert "detail_distance_to_reference" not in info
        else:
            s_maps = np.stack([_padded_map(r, GRID5) for r in table])
            t_maps = np.stack([_padded_map(r, GRID5) for r in teacher_all])
            _, s_det = pywt.dwt2(s_maps, "haar", mode="zero")
            _, t_det = pywt.dwt2(t_maps, "haar", mode="zero")
            distance = sum(float(np.mean((a - b) ** 2)) for a, b in zip(s_det, t_det))
            assert info["detail_distance_to_reference"] == pytest.approx(distance, rel=1e-12)


def test_the_top1_record_counts_hits_by_hand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 4-class case worked by hand (2 x 2 map, no padding), so the accuracy does not rest on
    the DWT alone.  Logits [a, b, c, d]: low = LL/2 everywhere = (a+b+c+d)/4 (a tie: argmax
    0); high = logits - low.  Image 0: [4, 0, 0, 0], label 0 -> hit for logits and high;
    image 1: [0, 0, 0, 4], label 2 -> miss everywhere; image 2: [0, 0, 4, 0], label 2 -> hit
    for logits and high.  Logits and high: 2/3 = 66.67 %; low (argmax 0): labels 0, 2, 2
    -> 1/3 = 33.33 %.  Drawn for image 0 (the default sample) into an existing folder."""
    recorder = FigureRecorder(monkeypatch)
    split = TableSplit([0, 2, 2], ["a", "b", "c", "d"])
    table = np.array([[4.0, 0, 0, 0], [0, 0, 0, 4.0], [0, 0, 4.0, 0]])
    paths = frequency.frequency_figure({"teacher": _run(tmp_path, split, table)}, tmp_path)
    record = json.loads(paths["json"].read_text())
    info = record["models"]["teacher"]
    assert info["test_top1"] == pytest.approx(200.0 / 3)
    assert info["test_top1_high_only"] == pytest.approx(200.0 / 3)
    assert info["test_top1_low_only"] == pytest.approx(100.0 / 3)
    assert "detail_distance_to_reference" not in info  # the reference row itself
    # without class_names the record names the class from .classes
    assert record["sample"] == 0 and record["label"] == 0 and record["class"] == "a"
    # image 0: the logits' and high part's argmax is the true class 0, marked "correct";
    # low = 1 everywhere (argmax takes the first: 0); high = [3, -1, -1, -1]
    axes = recorder.saved["frequency_components.png"].axes
    assert [ax.get_title().split(";")[0] for ax in axes] == [
        "teacher: logits, argmax 0 (correct)",
        "teacher: low, argmax 0 (correct)",
        "teacher: high, argmax 0 (correct)",
    ]


def test_sample_must_lie_in_the_test_split(tmp_path: Path) -> None:
    """Samples 0..6 of 7: the last one is drawn, -1 and 7 are refused with the valid range.
    The one row is not the ``reference`` ("teacher" is absent): no detail distance."""
    split = TableSplit([0, 1, 2, 3, 0, 1, 2], ["a", "b", "c", "d"])
    table = np.random.default_rng(1).normal(size=(7, 4))
    rows = {"kd": _run(tmp_path, split, table)}
    paths = frequency.frequency_figure(rows, tmp_path, sample=6)
    record = json.loads(paths["json"].read_text())
    assert record["sample"] == 6 and record["label"] == 2
    assert "detail_distance_to_reference" not in record["models"]["kd"]
    for bad in (-1, 7):
        with pytest.raises(ValueError, match=r"sample .* outside the test split \(0\.\.6\)"):
            frequency.frequency_figure(rows, tmp_path, sample=bad)


# ------------------------------------------------------------------ frequency: the drawing


def _suptitle(figure: Figure) -> Text:
    """The figure's suptitle artist (matplotlib keeps it in the private ``_suptitle``)."""
    title = getattr(figure, "_suptitle", None)
    assert isinstance(title, Text), "the figure has no suptitle"
    return title


def test_frequency_png_draws_the_saved_bands_on_shared_scales(drawn: Drawn) -> None:
    """What ``frequency.png`` shows: image (i, j) is row i's map/band j (PyWavelets); the map
    and LL columns span [min, max] over the rows, the detail columns +-max|value| (a
    symmetric scale); titles on the first row, the model and its prediction (and detail
    distance) on the first column; 5 columns of 2.6 in and 3 rows of 2.5 in at 110 dpi."""
    three_rows, paths, record = drawn.rows, drawn.paths, drawn.record
    figure = drawn.figures["frequency.png"]
    axes = [ax for ax in figure.axes if ax.images]
    assert len(axes) == 15
    grid = np.asarray(axes).reshape(3, 5)
    columns = ("map", *frequency.BANDS)
    names = list(three_rows)
    want_maps = {
        name: {
            "map": _padded_map(_table(three_rows[name]).logits.numpy()[3], GRID5),
            **_pywt_parts(_table(three_rows[name]).logits.numpy()[3], GRID5),
        }
        for name in names
    }
    for j, column in enumerate(columns):
        values = np.stack([want_maps[n][column] for n in names])
        if column in ("map", "LL"):
            want_clim, want_cmap = (values.min(), values.max()), "viridis"
        else:
            limit = np.abs(values).max()
            want_clim, want_cmap = (-limit, limit), "RdBu_r"
        for i, name in enumerate(names):
            image = grid[i, j].images[0]
            np.testing.assert_allclose(image.get_array(), want_maps[name][column], atol=1e-12)
            np.testing.assert_allclose(image.get_clim(), want_clim, rtol=0, atol=1e-12)
            assert image.get_cmap().name == want_cmap
            title = "logit map" if column == "map" else column
            assert grid[i, j].get_title() == (title if i == 0 else "")
            info = record["models"][name]
            label = f"{name}\npred {int(np.argmax(_table(three_rows[name]).logits.numpy()[3]))}"
            if name != "teacher":
                label += f"\ndetail dist {info['detail_distance_to_reference']:.3g}"
            assert grid[i, j].get_ylabel() == (label if j == 0 else "")
            if j == 0:
                assert grid[i, j].yaxis.label.get_fontsize() == 9
    assert "test image 3 (class 3: three), haar DWT" in _suptitle(figure).get_text()
    assert _suptitle(figure).get_fontsize() == 10
    assert _png_size(paths["png"]) == (round(2.6 * 5 * 110), round(2.5 * 3 * 110))


def test_detail_columns_without_detail_get_a_unit_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Constant 4-class logits fill a 2 x 2 map with one constant block: every detail band
    is exactly 0 (Haar differences of equal numbers), so the symmetric scale falls back to
    [-1, 1] instead of an empty [0, 0]; one row still gives a 1 x 5 grid of axes."""
    recorder = FigureRecorder(monkeypatch)
    split = TableSplit([1, 1], ["a", "b", "c", "d"])
    table = np.full((2, 4), 2.5)
    frequency.frequency_figure({"teacher": _run(tmp_path, split, table)}, tmp_path, sample=1)
    axes = [ax for ax in recorder.saved["frequency.png"].axes if ax.images]
    assert len(axes) == 5
    # (the map and LL columns have vmin == vmax here, which matplotlib widens itself)
    assert [ax.images[0].get_clim() for ax in axes[2:]] == [(-1.0, 1.0)] * 3


def test_components_png_draws_logits_low_and_high_as_bars(drawn: Drawn) -> None:
    """``frequency_components.png``: per row, bars of the logits and of the PyWavelets low
    and high parts, one unit wide, the true class red and the others grey, a zero line;
    titles name the argmax and whether it is the true class; x labels on the last row only
    (shared x axis); 13 in x 2.4 in per row at 110 dpi."""
    three_rows, paths, record = drawn.rows, drawn.paths, drawn.record
    figure = drawn.figures["frequency_components.png"]
    grid = np.asarray(figure.axes).reshape(3, 3)
    red, grey = to_rgba("tab:red"), to_rgba("tab:gray")
    for i, name in enumerate(three_rows):
        logits = _table(three_rows[name]).logits.numpy()[3]
        parts = _pywt_parts(logits, GRID5)
        info = record["models"][name]
        top1 = {"logits": info["test_top1"], "low": info["test_top1_low_only"],
                "high": info["test_top1_high_only"]}
        for j, (column, values) in enumerate(
            (("logits", logits), ("low", parts["low"]), ("high", parts["high"]))
        ):
            ax = grid[i, j]
            bars = ax.patches
            np.testing.assert_allclose([b.get_height() for b in bars], values, atol=1e-12)
            np.testing.assert_allclose([b.get_width() for b in bars], 1.0)
            np.testing.assert_allclose([b.get_x() + 0.5 for b in bars], np.arange(5))
            assert [b.get_facecolor() for b in bars] == [red if c == 3 else grey for c in range(5)]
            (line,) = ax.lines
            assert list(line.get_ydata()) == [0.0, 0.0] and line.get_linewidth() == 0.5
            top = int(np.argmax(values))
            mark = "correct" if top == 3 else "wrong"
            assert ax.get_title() == (
                f"{name}: {column}, argmax {top} ({mark}); test top-1 {top1[column]:.1f}"
            )
            assert ax.title.get_fontsize() == 9
            assert ax.get_xlabel() == ("class" if i == 2 else "")
            assert ax.get_shared_x_axes().joined(ax, grid[0, 0])
    assert "test image 3 (true class 3: three, red)" in _suptitle(figure).get_text()
    assert _suptitle(figure).get_fontsize() == 10
    assert _png_size(paths["components_png"]) == (13 * 110, round(2.4 * 3 * 110))


# -------------------------------------------------------------------------------- t-SNE


def test_pick_indices_takes_the_first_per_class_of_the_first_classes() -> None:
    """Worked by hand: targets 2 0 1 0 0 3 1 2 0 (indices 0..8), classes 0 and 1, two each:
    label 0 at 1, 3 (not 4, 8), label 1 at 2, 6; labels 2 and 3 are not wanted."""
    targets = [2, 0, 1, 0, 0, 3, 1, 2, 0]
    assert tsne.pick_indices(targets, classes=2, per_class=2) == [1, 2, 3, 6]
    assert tsne.pick_indices(targets, classes=3, per_class=1) == [0, 1, 2]
    assert tsne.pick_indices(targets, classes=4, per_class=3) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert tsne.pick_indices(targets, classes=0, per_class=5) == []


def _sklearn_tsne(embedding: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    return TSNE(
        n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
        random_state=seed,
    ).fit_transform(embedding)


@pytest.mark.parametrize(
    ("points", "perplexity"),
    [
        (3, 1.0),  # (3 - 1) / 3 = 0.67 < 1: the floor of 1 applies
        (4, 1.0),  # (4 - 1) / 3 = 1
        (10, 3.0),  # (10 - 1) / 3 = 3 < 30
    ],
)
def test_tsne_caps_the_perplexity_for_few_points(points: int, perplexity: float) -> None:
    """Few points: perplexity min(30, max(1, (n - 1) / 3)) (worked out in the cases);
    the map is sklearn's TSNE with PCA init, auto learning rate, random_state 0."""
    embedding = np.random.default_rng(points).normal(size=(points, 5))
    want = _sklearn_tsne(embedding, perplexity, seed=0)
    np.testing.assert_allclose(tsne.tsne_2d(embedding), want, rtol=0, atol=1e-6)


def test_tsne_keeps_the_perplexity_asked_for_with_enough_points() -> None:
    """100 points: (100 - 1) / 3 = 33 > 30, so the default perplexity 30 is used as is, and
    an explicit 12 with seed 3 as well (sklearn's TSNE with those settings)."""
    embedding = np.random.default_rng(7).normal(size=(100, 4))
    np.testing.assert_allclose(
        tsne.tsne_2d(embedding), _sklearn_tsne(embedding, 30.0, 0), rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(
        tsne.tsne_2d(embedding, 12.0, 3), _sklearn_tsne(embedding, 12.0, 3), rtol=0, atol=1e-6
    )


def _tsne_runs(tmp_path: Path, targets: list[int], dims: int = 3) -> dict[str, LoadedRun]:
    split = TableSplit(targets, [f"c{k}" for k in range(max(targets) + 1)])
    generator = np.random.default_rng(len(targets))
    runs = {}
    for name in ("kd", "figkd"):
        embedding = generator.normal(size=(len(targets), dims)) + np.asarray(targets)[:, None]
        runs[name] = _run(tmp_path / name, split, np.zeros((len(targets), 1)), embedding)
    return runs


def test_tsne_figure_saves_the_picked_rows_and_sklearns_maps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Classes 0..2, two images each, from a split whose labels come unordered and include
    class 3: the picked indices (by hand: 0 (2), 1 (0), 2 (1), 3 (0), 5 (1), 7 (2)), their
    labels and embedding rows; each map is sklearn's TSNE of those rows (6 points: perplexity
    min(4, (6 - 1) / 3) = 5/3); silhouette by sklearn; the scatter draws those coordinates,
    coloured by label on tab10's 0..9 scale; 4.2 in per model at 110 dpi."""
    from sklearn.metrics import silhouette_score

    recorder = FigureRecorder(monkeypatch)
    targets = [2, 0, 1, 0, 3, 1, 0, 2, 3, 1]
    runs = _tsne_runs(tmp_path, targets)
    paths = tsne.tsne_figure(
        runs, tmp_path / "x" / "y", classes=3, per_class=2, perplexity=4.0, seed=2
    )
    arrays = np.load(paths["npz"])
    record = json.loads(paths["json"].read_text())
    picked = [0, 1, 2, 3, 5, 7]
    assert arrays["indices"].tolist() == picked
    assert arrays["labels"].tolist() == [targets[i] for i in picked]
    assert {k: record[k] for k in ("classes", "per_class", "perplexity", "seed")} == {
        "classes": 3, "per_class": 2, "perplexity": 4.0, "seed": 2
    }
    figure = recorder.saved["tsne.png"]
    for ax, (name, run) in zip(figure.axes, runs.items(), strict=True):
        rows = _table(run).embedding.numpy()[picked]
        np.testing.assert_array_equal(arrays[f"{name}__embedding"], rows)
        want = _sklearn_tsne(rows, 5.0 / 3.0, seed=2)
        np.testing.assert_allclose(arrays[f"{name}__tsne"], want, rtol=0, atol=1e-6)
        score = float(silhouette_score(rows, arrays["labels"]))
        assert record["models"][name]["silhouette"] == pytest.approx(score, rel=1e-12)
        assert record["models"][name]["run_dir"] == str(tmp_path / name)
        (points,) = ax.collections
        assert isinstance(points, PathCollection)  # what scatter draws
        np.testing.assert_allclose(np.asarray(points.get_offsets()), want, rtol=0, atol=1e-6)
        colours = points.get_array()
        assert colours is not None and colours.tolist() == [targets[i] for i in picked]
        assert points.get_cmap().name == "tab10" and points.get_clim() == (0, 9)
        assert points.get_sizes().tolist() == [8]
        assert ax.get_title() == f"{name} (silhouette {score:.3f})"
    assert "6 test images of the first 3 classes" in _suptitle(figure).get_text()
    assert _suptitle(figure).get_fontsize() == 10
    assert _png_size(paths["png"]) == (round(4.2 * 2 * 110), round(4.2 * 110))


def test_tsne_colours_wrap_on_tab20_beyond_ten_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eleven classes take tab20 (0..19), labels modulo 20; a single model still draws.
    One image per class: the silhouette is undefined (sklearn accepts 2..n-1 labels only),
    recorded as NaN; this used to raise sklearn's ValueError (``--per-class 1``)."""
    recorder = FigureRecorder(monkeypatch)
    targets = list(range(11))
    runs = {"figkd": _tsne_runs(tmp_path, targets)["figkd"]}
    paths = tsne.tsne_figure(runs, tmp_path, classes=11, per_class=1)
    assert np.isnan(json.loads(paths["json"].read_text())["models"]["figkd"]["silhouette"])
    (points,) = recorder.saved["tsne.png"].axes[0].collections
    assert points.get_cmap().name == "tab20" and points.get_clim() == (0, 19)
    colours = points.get_array()
    assert colours is not None and colours.tolist() == targets


def test_tsne_defaults_are_the_clis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Called without options, ``tsne_figure`` uses what ``figkd figures --help`` documents:
    the first 10 classes, 50 images each, perplexity 30, t-SNE seed 0.  Split: 51 images of
    class 0 and one of each class 1..10 -> 50 + 9 = 59 picked (class 10 and the 51st image
    left out).  Ten classes still fit tab10."""
    recorder = FigureRecorder(monkeypatch)
    targets = [0] * 51 + list(range(1, 11))
    runs = {"figkd": _tsne_runs(tmp_path, targets, dims=2)["figkd"]}
    paths = tsne.tsne_figure(runs, tmp_path)
    (points,) = recorder.saved["tsne.png"].axes[0].collections
    assert points.get_cmap().name == "tab10" and points.get_clim() == (0, 9)
    record = json.loads(paths["json"].read_text())
    assert {k: record[k] for k in ("classes", "per_class", "perplexity", "seed")} == {
        "classes": 10, "per_class": 50, "perplexity": 30.0, "seed": 0
    }
    assert np.load(paths["npz"])["indices"].tolist() == list(range(50)) + list(range(51, 60))


def test_tsne_needs_three_images_and_two_classes_for_a_silhouette(tmp_path: Path) -> None:
    """Two picked images are refused; three are drawn; with one class the silhouette is
    undefined (NaN) rather than an error."""
    runs = _tsne_runs(tmp_path, [0, 0, 0, 1])
    with pytest.raises(ValueError, match=r"too few test images for a t-SNE \(2\)"):
        tsne.tsne_figure(runs, tmp_path, classes=1, per_class=2)
    paths = tsne.tsne_figure(runs, tmp_path, classes=1, per_class=3)
    record = json.loads(paths["json"].read_text())
    assert all(np.isnan(m["silhouette"]) for m in record["models"].values())
    # two classes (labels 0 0 0 1) are enough: sklearn's silhouette of those four rows
    from sklearn.metrics import silhouette_score

    paths = tsne.tsne_figure(runs, tmp_path, classes=2, per_class=3)
    record = json.loads(paths["json"].read_text())
    for name, run in runs.items():
        want = silhouette_score(_table(run).embedding.numpy(), [0, 0, 0, 1])
        assert record["models"][name]["silhouette"] == pytest.approx(float(want), rel=1e-12)


# --------------------------------------------------------------------------------- runs


def test_forward_all_keeps_the_order_of_the_indices_across_batches() -> None:
    """Indices 4 2 0 3 1 in batches of two: rows follow the indices, not the split order."""
    logits = np.arange(15, dtype=np.float64).reshape(5, 3)
    embedding = -np.arange(10, dtype=np.float64).reshape(5, 2)
    split = TableSplit([3, 1, 4, 1, 5], ["x"] * 6)
    table = TableModel(logits, embedding)  # a stand-in: forward_all reads forward_features only
    result = forward_all(table, split, [4, 2, 0, 3, 1], batch_size=2)  # type: ignore[arg-type]
    order = [4, 2, 0, 3, 1]
    np.testing.assert_array_equal(result["logits"], logits[order])
    np.testing.assert_array_equal(result["embedding"], embedding[order])
    assert result["labels"].tolist() == [5, 4, 3, 1, 1]
    assert result["logits"].dtype == np.float64


def test_a_folder_without_config_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"is not a run folder: .*config\.yaml is missing"):
        read_run_config(tmp_path)


def _cifar_run(folder: Path, root: str) -> None:
    """A run folder of tiny_cnn (width 4) on CIFAR-100, no preset named (the default one)."""
    cfg = config_from_dict(
        {
            "experiment": "edges",
            "model": {"name": "tiny_cnn", "args": {"width": 4}},
            "data": {"dataset": "cifar100", "root": root},
        }
    )
    assert cfg.data.preset is None
    folder.mkdir(parents=True)
    save_config(cfg, folder / "config.yaml")
    (folder / "checkpoints").mkdir()


def _weights(seed: int) -> dict[str, torch.Tensor]:
    from figkd.models import create_model

    torch.manual_seed(seed)
    return create_model("tiny_cnn", num_classes=100, in_channels=3, width=4).state_dict()


def test_load_run_uses_the_eval_transform_and_the_data_root_given(
    tmp_path: Path, fake_cifar100: Path
) -> None:
    """The config's data.root does not exist; ``data_root`` points at the fake CIFAR-100.
    Test image 7 must be the raw pixels / 255, normalised with CIFAR-100's mean and std
    (no random crop or flip: the evaluation transform), the same on every read."""
    run_dir = tmp_path / "run"
    _cifar_run(run_dir, str(tmp_path / "moved-away"))
    torch.save(_weights(0), run_dir / "checkpoints" / "last.pt")
    run = load_run(run_dir, data_root=fake_cifar100)
    with open(fake_cifar100 / "cifar-100-python" / "test", "rb") as handle:
        raw = pickle.load(handle, encoding="bytes")
    pixels = np.asarray(raw[b"data"][7], dtype=np.float64).reshape(3, 32, 32) / 255.0
    mean = np.array([0.5071, 0.4867, 0.4408])[:, None, None]
    std = np.array([0.2675, 0.2565, 0.2761])[:, None, None]
    image, label = run.test[7]
    assert label == raw[b"fine_labels"][7]
    np.testing.assert_allclose(image.double().numpy(), (pixels - mean) / std, atol=1e-5)
    assert torch.equal(run.test[7][0], image)
    assert run.name == "edges/run" and len(run.test.classes) == 100


def test_load_run_prefers_last_pt_over_teacher_pt(tmp_path: Path, fake_cifar100: Path) -> None:
    """A teacher run holding last.pt, best.pt and teacher.pt with different weights:
    the default reads last.pt, ``checkpoint="best.pt"`` reads best.pt; teacher.pt stands in
    for last.pt only when last.pt is missing."""
    run_dir = tmp_path / "run"
    _cifar_run(run_dir, str(fake_cifar100))
    files = {"last.pt": _weights(1), "best.pt": _weights(2), "teacher.pt": _weights(3)}
    for name, state in files.items():
        torch.save(state, run_dir / "checkpoints" / name)

    def fc_of(run: LoadedRun) -> torch.Tensor:
        return run.model.state_dict()["fc.weight"]

    assert torch.equal(fc_of(load_run(run_dir)), files["last.pt"]["fc.weight"])
    best = load_run(run_dir, checkpoint="best.pt")
    assert torch.equal(fc_of(best), files["best.pt"]["fc.weight"])
    (run_dir / "checkpoints" / "last.pt").unlink()
    assert torch.equal(fc_of(load_run(run_dir)), files["teacher.pt"]["fc.weight"])
