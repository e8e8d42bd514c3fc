"""``figkd figures``: the frequency view (Fig. 5) and t-SNE (Fig. 6) from trained run folders.

A one-epoch study on fake Tiny-ImageNet data (12 classes -> a 4x3 logit map) provides a
teacher and CE, KD and FiGKD students; the figures' saved numbers are checked against
PyWavelets and against the models themselves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import pywt
import torch
from conftest import unit_tier
from PIL import Image

from figkd.analysis import study as S
from figkd.analysis.runs import forward_all, load_run
from figkd.cli import main
from figkd.data import synthetic
from figkd.losses import FiGKDLoss, build_loss


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("figures")
    patch = pytest.MonkeyPatch()
    patch.setenv("FIGKD_CACHE", str(base / "cache"))
    root = synthetic.write_fake_tiny_imagenet(
        base / "data", num_classes=12, train_per_class=6, val_per_class=3, size=32
    )
    tier = unit_tier(teacher_epochs=2, val_fraction=0.2)
    methods = [m for m in S.main_methods(1) if m.name in ("ce", "kd", "figkd")]
    study = S.plan_study(tier, base / "runs", root, methods=methods, device="cpu")
    manifest = S.run_study(study, say=lambda _: None)
    assert {r["status"] for r in manifest["runs"]} == {"trained"}
    yield study.out / tier.pairs[0].name
    patch.undo()


def _padded_map(logits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return np.pad(logits, (0, h * w - logits.size)).reshape(h, w)


def test_frequency_bands_equal_pywavelets(pair_dir: Path, capsys) -> None:
    assert main(["figures", str(pair_dir.parent), "--kind", "frequency", "--sample", "5"]) == 0
    out = pair_dir / "figures"
    assert "frequency.png" in capsys.readouterr().out
    with Image.open(out / "frequency.png") as image:
        assert image.format == "PNG" and image.size[0] > 500
    arrays = np.load(out / "frequency.npz")
    record = json.loads((out / "frequency.json").read_text())
    assert set(record["models"]) == {"teacher", "kd", "figkd"}
    assert record["grid"] == [4, 3] and record["sample"] == 5
    for name, info in record["models"].items():
        logits = arrays[f"{name}__logits"]
        assert np.array_equal(logits, np.asarray(info["logits"]))
        ll, (lh, hl, hh) = pywt.dwt2(_padded_map(logits, (4, 3)), "haar", mode="zero")
        for band, ref in zip(("LL", "LH", "HL", "HH"), (ll, lh, hl, hh), strict=True):
            np.testing.assert_allclose(arrays[f"{name}__{band}"], ref, rtol=0, atol=1e-12)
            np.testing.assert_allclose(np.asarray(info["bands"][band]), ref, rtol=0, atol=1e-12)
        # the saved logits are the model's own on that test image
        run = load_run(info["run_dir"])
        image, label = run.test[5]
        with torch.no_grad():
            fresh = run.model(image[None]).double().numpy()[0]
        np.testing.assert_allclose(logits, fresh, rtol=0, atol=1e-5)
        assert label == record["label"] and info["predicted"] == int(np.argmax(logits))
        # class-space components (Figs. 2 and 5): pywt.idwt2 of LL alone / of the details alone
        zero = np.zeros_like(ll)
        low = pywt.idwt2((ll, (zero, zero, zero)), "haar", mode="zero")[:4, :3].reshape(-1)[:12]
        high = pywt.idwt2((zero, (lh, hl, hh)), "haar", mode="zero")[:4, :3].reshape(-1)[:12]
        for part, ref in (("low", low), ("high", high)):
            np.testing.assert_allclose(arrays[f"{name}__{part}"], ref, rtol=0, atol=1e-12)
            np.testing.assert_allclose(info["components"][part], ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(low + high, logits, rtol=0, atol=1e-9)
        assert info["predicted_high"] == int(np.argmax(high))
        assert info["predicted_low"] == int(np.argmax(low))
    with Image.open(out / "frequency_components.png") as image:
        assert image.format == "PNG" and image.size[0] > 500
    # each student's detail distance is FiGKD's detail loss against the teacher, test-wide
    teacher = load_run(record["models"]["teacher"]["run_dir"])
    everything = list(range(len(teacher.test)))
    t_out = forward_all(teacher.model, teacher.test, everything)
    t_logits = torch.as_tensor(t_out["logits"])
    # the teacher's top-1 from its high component alone, over the test split, by pywt
    maps = t_out["logits"].reshape(-1, 4, 3)  # 12 classes fill the 4x3 map
    _, details = pywt.dwt2(maps, "haar", mode="zero")
    zero = np.zeros_like(details[0])
    high = pywt.idwt2((zero, details), "haar", mode="zero")[:, :4, :3].reshape(len(maps), 12)
    want = 100.0 * np.mean(high.argmax(1) == t_out["labels"])
    assert record["models"]["teacher"]["test_top1_high_only"] == pytest.approx(want, abs=1e-9)
    for name in ("kd", "figkd"):
        student = load_run(record["models"][name]["run_dir"])
        s_logits = torch.as_tensor(forward_all(student.model, student.test, everything)["logits"])
        reference = build_loss("figkd", beta=1.0)
        assert isinstance(reference, FiGKDLoss)
        expected = reference.detail_loss(s_logits, t_logits).item()
        assert record["models"][name]["detail_distance_to_reference"] == pytest.approx(
            expected, rel=1e-9
        )


def test_tsne_of_student_embeddings(pair_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs"
    args = ["figures", "--kind", "tsne", "--out", str(out), "--classes", "4", "--per-class", "3"]
    args += ["--ce", str(pair_dir / "ce" / "seed0"), "--kd", str(pair_dir / "kd" / "seed0")]
    args += ["--figkd", str(pair_dir / "figkd" / "seed0")]
    assert main(args) == 0
    with Image.open(out / "tsne.png") as image:
        assert image.format == "PNG"
    arrays = np.load(out / "tsne.npz")
    record = json.loads((out / "tsne.json").read_text())
    assert set(record["models"]) == {"ce", "kd", "figkd"}
    labels, indices = arrays["labels"], arrays["indices"].tolist()
    assert len(indices) == 12 and sorted(set(labels.tolist())) == [0, 1, 2, 3]
    run = load_run(pair_dir / "figkd" / "seed0")
    with torch.no_grad():
        images = torch.stack([run.test[i][0] for i in indices])
        embedding = run.model.forward_features(images)["embedding"].double().numpy()
    np.testing.assert_allclose(arrays["figkd__embedding"], embedding, rtol=0, atol=1e-5)
    assert arrays["figkd__tsne"].shape == (12, 2) and np.isfinite(arrays["figkd__tsne"]).all()
    assert all(-1.0 <= m["silhouette"] <= 1.0 for m in record["models"].values())


def test_pairs_of_a_study_moved_to_another_machine(pair_dir: Path, tmp_path: Path) -> None:
    """After `figkd state` moved a study, the recorded teacher path no longer exists and the
    teacher run holds only teacher.pt: the teacher is found by the SHA-256 its students
    recorded, and loaded from teacher.pt."""
    import shutil

    from figkd.commands.figures import find_pairs

    moved = tmp_path / "elsewhere"
    shutil.copytree(pair_dir.parent, moved)
    teacher_run = next(moved.rglob("teachers/*/seed0"))
    (teacher_run / "checkpoints" / "last.pt").unlink()
    (teacher_run / "checkpoints" / "best.pt").unlink()
    # a checkpoint of another teacher, found first: only the recorded SHA-256 tells them apart
    decoy = moved / "aaa-other-teacher" / "checkpoints" / "teacher.pt"
    decoy.parent.mkdir(parents=True)
    decoy.write_bytes(b"weights of some other teacher")
    original = next(pair_dir.parent.rglob("teachers/*/seed0/checkpoints/teacher.pt"))
    original.rename(original.with_suffix(".away"))  # the recorded path is gone
    try:
        (found,) = find_pairs(moved, 0)
    finally:
        original.with_suffix(".away").rename(original)
    assert found["teacher"] == teacher_run
    here = load_run(teacher_run)  # last.pt is gone: the same final weights from teacher.pt
    there = load_run(original.parent.parent)
    for key, value in there.model.state_dict().items():
        assert torch.equal(here.model.state_dict()[key], value)
    with pytest.raises(FileNotFoundError, match="best.pt"):
        load_run(teacher_run, checkpoint="best.pt")  # no silent stand-in for another file


def test_a_missing_folder_and_a_file_are_told_apart(tmp_path: Path) -> None:
    from figkd.commands.figures import find_pairs

    with pytest.raises(FileNotFoundError, match=r"missing does not exist: give a study folder"):
        find_pairs(tmp_path / "missing", 0)
    file = tmp_path / "study.md"
    file.write_text("a table, not a folder")
    with pytest.raises(FileNotFoundError, match=r"study.md is not a folder: give a study folder"):
        find_pairs(file, 0)


def test_a_seed_without_runs_points_at_the_seeds_there(pair_dir: Path, tmp_path: Path) -> None:
    """The study trained seed 0 only: asking for seed 1 names seed 0; a folder with no FiGKD
    run at all gets no such hint."""
    from figkd.commands.figures import find_pairs

    with pytest.raises(FileNotFoundError, match=r"no figkd/seed1 run .*: pass --seed 0 for"):
        find_pairs(pair_dir.parent, 1)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        find_pairs(empty, 0)
    assert "pass --seed" not in str(info.value)
    assert "name the runs with --teacher/--kd/--figkd" in str(info.value)


def test_several_pairs_with_out_get_one_subfolder_each(pair_dir: Path, tmp_path: Path) -> None:
    """Two pairs written to one --out must not overwrite each other's figures."""
    import shutil

    study = tmp_path / "study"
    shutil.copytree(pair_dir, study / "pair-a")
    shutil.copytree(pair_dir, study / "pair-b")
    out = tmp_path / "figs"
    argv = ["figures", str(study), "--kind", "frequency", "--out", str(out)]
    argv += ["--teacher", str(next(pair_dir.parent.rglob("teachers/*/seed0")))]
    assert main(argv) == 0
    for pair in ("pair-a", "pair-b"):
        record = json.loads((out / pair / "frequency.json").read_text())
        assert Path(record["models"]["figkd"]["run_dir"]) == study / pair / "figkd" / "seed0"
    assert not (out / "frequency.json").exists()
