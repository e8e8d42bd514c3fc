"""``figkd pack`` and ``figkd state`` as the CLI runs them: what they print and write.

``pack``: the expected pixels come from the fake datasets themselves (every CIFAR image of
class ``c`` is the solid ``class_color(c)`` with pixel (0, 0) red set to ``i % 256``), the
expected ``pack.json`` fields from ``os.stat`` and counts worked out here.  ``state``: a study
folder built by hand (a finished teacher with a 16 MiB ``teacher.pt`` and a finished student),
checked with ``tarfile``/``hashlib`` on the parts it writes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from figkd import data
from figkd.cli import main
from figkd.data import synthetic

MIB = 1 << 20


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIGKD_CACHE", str(tmp_path / "cache"))


def _fake_cifar_pixels(labels: list[int]) -> np.ndarray:
    """(N, 32, 32, 3) uint8 as ``write_fake_cifar100`` draws them: solid ``class_color``,
    red channel of pixel (0, 0) set to ``i % 256``."""
    images = np.zeros((len(labels), 32, 32, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i] = synthetic.class_color(label)
        images[i, 0, 0, 0] = i % 256
    return images


# --------------------------------------------------------------------------- pack


def test_pack_cifar_defaults_write_exact_pixels_blocks_and_pack_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CIFAR-100 (not Tiny-ImageNet: no tar/folder lookup) packed with the defaults: med-xz,
    ``--block 2048`` (``write_shards``' documented default), ``--max-mib 45``.  2100 train
    images (21 per class, class-major order c = i % 100) make two blocks, 2048 + 52."""
    root = synthetic.write_fake_cifar100(tmp_path / "data", train_per_class=21, test_per_class=1)
    out = tmp_path / "packed"
    assert main(["pack", "cifar100", "--data-root", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    want = {"train": _fake_cifar_pixels([i % 100 for i in range(2100)]),
            "test": _fake_cifar_pixels(list(range(100)))}
    summary = json.loads((out / "pack.json").read_text())
    assert summary["dataset"] == "cifar100" and summary["root"] == str(root)
    assert summary["size"] is None and summary["codec"] == "med-xz"
    assert summary["max_mib"] == 45.0  # the default the docs' example passes explicitly
    for split, pixels in want.items():
        files = sorted(out.glob(f"{split}-*.npz"))
        assert [f.name for f in files] == [f"{split}-00000-of-00001.npz"]  # far under 45 MiB
        assert summary["splits"][split] == {
            "images": len(pixels), "shape": [32, 32, 3],
            "files": {f.name: os.stat(f).st_size for f in files},
        }
        with np.load(files[0]) as z:
            assert str(z["codec"]) == "med-xz"
            assert np.array_equal(z["labels"], np.arange(len(pixels)) % 100)
            assert list(z["classes"]) == [f"class_{c:03d}" for c in range(100)]
            shapes = z["block_shapes"].tolist()
        # 2100 = 2048 + 52; 100 test images fit one block
        assert shapes == ([[2048, 32, 32, 3], [52, 32, 32, 3]] if split == "train"
                          else [[100, 32, 32, 3]])
        read = data.load_dataset("uint8-shards", out, split)  # the documented reader
        cache = data.build_uint8_cache("uint8-shards", out, split, None)
        assert len(read) == len(pixels)
        assert np.array_equal(cache.images.permute(0, 2, 3, 1).numpy(), pixels)
        size = sum(f.stat().st_size for f in files)
        assert (f"{split}: {len(pixels)} images (32, 32, 3) -> 1 shard(s), "
                f"{size / MIB:.1f} MiB ({size / pixels.nbytes:.2f} of raw)") in printed
    assert f"read it with dataset uint8-shards, root {out}" in printed


def test_pack_tiny_imagenet_from_its_parent_folder_records_the_located_root(
    tmp_path: Path,
) -> None:
    """``--data-root`` may be the folder above ``tiny-imagenet-200`` (``locate_tiny_imagenet``);
    ``pack.json`` names the folder actually read.  3 classes x 2 val images = 6 test images,
    resized to 8 x 8; raw codec, one split."""
    folder = synthetic.write_fake_tiny_imagenet(tmp_path / "data", num_classes=3,
                                                train_per_class=1, val_per_class=2, size=16)
    out = tmp_path / "packed"
    assert main(["pack", "tiny-imagenet", "--data-root", str(tmp_path / "data"), "--size", "8",
                 "--splits", "test", "--codec", "raw", "--out", str(out)]) == 0
    summary = json.loads((out / "pack.json").read_text())
    assert Path(summary["root"]).resolve() == folder.resolve()
    assert summary["size"] == 8 and summary["codec"] == "raw" and list(summary["splits"]) == ["test"]
    assert summary["splits"]["test"]["images"] == 6 and summary["splits"]["test"]["shape"] == [8, 8, 3]
    assert not list(out.glob("train-*.npz"))
    with np.load(out / "test-00000-of-00001.npz") as z:
        assert z["images"].shape == (6, 8, 8, 3)
        # val images cycle the wnids in reverse order; wnids are n09000000, n08999000, n08998000
        # (descending), labels are their sorted ranks, so reversed wnids give 0, 1, 2, 0, 1, 2
        assert z["labels"].tolist() == [0, 1, 2, 0, 1, 2]


def test_pack_json_records_the_folder_read_when_no_root_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without ``--data-root`` the dataset is found under ``$FIGKD_DATA``; ``pack.json`` names
    that folder (it said "None"), and a dataset that needs no files records null."""
    folder = synthetic.write_fake_cifar100(tmp_path / "data", train_per_class=1, test_per_class=1)
    monkeypatch.setenv("FIGKD_DATA", str(tmp_path / "data"))
    out = tmp_path / "packed"
    assert main(["pack", "cifar100", "--out", str(out), "--splits", "test"]) == 0
    assert json.loads((out / "pack.json").read_text())["root"] == str(folder)

    digits = tmp_path / "digits"
    assert main(["pack", "digits", "--out", str(digits), "--splits", "test", "--codec", "raw"]) == 0
    assert json.loads((digits / "pack.json").read_text())["root"] is None
    capsys.readouterr()


def test_pack_without_out_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out`` is required: argparse exits with status 2 and names it (no traceback)."""
    with pytest.raises(SystemExit) as stop:
        main(["pack", "cifar100", "--data-root", str(tmp_path)])
    assert stop.value.code == 2
    assert "--out" in capsys.readouterr().err


# --------------------------------------------------------------------------- state


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """A regular file's bytes (extractfile gives None for anything else)."""
    handle = tar.extractfile(member)
    assert handle is not None, f"{member.name} is not a regular file"
    return handle.read()


def _write_study(root: Path, teacher_bytes: bytes) -> dict[str, bytes]:
    """A study folder by hand, in the engine's layout: a finished teacher (2 epochs, with
    ``teacher.pt``) and a finished student (3 epochs).  Returns every file's bytes."""
    files = {
        "unit/teachers/t0/config.yaml": b"model: {name: tiny_cnn}\n",
        "unit/teachers/t0/summary.json": json.dumps({"status": "finished", "epochs": 2}).encode(),
        "unit/teachers/t0/checkpoints/teacher.pt": teacher_bytes,
        "unit/pair/ce/seed0/config.yaml": b"model: {name: tiny_cnn}\n",
        "unit/pair/ce/seed0/summary.json": json.dumps({"status": "finished", "epochs": 3}).encode(),
    }
    for rel, payload in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(payload)
    return files


def test_state_export_show_import_with_default_part_and_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defaults ``--part-mib 15`` and ``--budget-mib 58`` (``export_state``'s defaults): a
    16 MiB ``teacher.pt`` makes the tar stream longer than 15 MiB, so the first part is exactly
    15 MiB and a second holds the rest.  Parts are checked with ``hashlib``/``tarfile``."""
    teacher = np.random.default_rng(0).integers(0, 256, 16 * MIB, dtype=np.uint8).tobytes()
    study = tmp_path / "study"
    files = _write_study(study, teacher)
    bundle = tmp_path / "bundle"
    assert main(["state", "export", str(study), str(bundle)]) == 0
    printed = capsys.readouterr().out
    parts = sorted(bundle.glob("state.tar.*"))
    assert [p.name for p in parts] == ["state.tar.00", "state.tar.01"]
    assert parts[0].stat().st_size == 15 * MIB
    total = sum(p.stat().st_size for p in parts)
    assert printed == (f"state: 2 run(s) carried (2 finished), 0 dropped over the 58 MiB "
                       f"budget; 2 part(s), {total / MIB:.1f} MiB, in {bundle}\n")
    manifest = json.loads((bundle / "state.json").read_text())
    assert [(p["name"], p["bytes"], p["sha256"]) for p in manifest["parts"]] == [
        (p.name, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) for p in parts
    ]
    stream = b"".join(p.read_bytes() for p in parts)
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as tar:
        carried = {m.name: _read_member(tar, m) for m in tar.getmembers()}
    assert carried == files  # every file, byte for byte, in one tar stream cut into parts

    assert main(["state", "show", str(bundle)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"bundle {bundle}: 2 part(s), {total / MIB:.1f} MiB, exported from {study.resolve()}",
        "  unit/pair/ce/seed0: finished at epoch 3",
        "  unit/teachers/t0: finished at epoch 2; sends teacher.pt",
    ]
    assert main(["state", "show", str(study)]) == 0
    small = sum(len(b) for b in files.values())  # 16 MiB + a few hundred bytes
    assert capsys.readouterr().out.splitlines()[0] == (
        f"study folder {study}: {small / MIB:.1f} MiB in carried files"
    )

    dest = tmp_path / "dest"
    assert main(["state", "import", str(bundle), str(dest)]) == 0
    printed = capsys.readouterr().out
    assert "  took unit/pair/ce/seed0\n" in printed and "  took unit/teachers/t0\n" in printed
    for rel, payload in files.items():
        assert (dest / rel).read_bytes() == payload


def test_state_without_an_action_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """``figkd state`` needs an action (export, import, records or show): argparse exits with 2."""
    with pytest.raises(SystemExit) as stop:
        main(["state"])
    assert stop.value.code == 2
    assert "ACTION" in capsys.readouterr().err
