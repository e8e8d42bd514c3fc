"""Edge cases of loading weights (models/checkpoint.py) and of counting them (complexity.py).

Checkpoints are written with plain ``torch.save`` and every loaded tensor is compared with
the one the test saved; digests come from ``hashlib``.  Parameter and MAC counts of tiny
conv/linear nets are worked out by hand in the comments; model-level figures are the
published ones (RepDistiller's resnet8x4 parameter count, the FiGKD paper's Table 15).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from figkd.models import CheckpointMismatchError, ZooModel, create_model, load_checkpoint
from figkd.models.checkpoint import (
    CheckpointInfo,
    extract_state_dict,
    file_sha256,
    fitting_architectures,
    read_checkpoint_file,
)
from figkd.models.complexity import (
    Complexity,
    complexity_table,
    count_flops,
    count_macs,
    count_parameters,
    measure,
)
from figkd.models.tiny import TinyCNN

# --------------------------------------------------------------------------- helpers

#: tests that search the whole zoo for fitting architectures; the others search a few
#: candidates (the search builds every model and only phrases the error's advice)
WHOLE_ZOO = {"test_file_of_another_zoo_model_names_it"}
FEW_MODELS = ["resnet20", "resnet8x4", "tiny_cnn", "vgg8", "wrn_16_2"]


@pytest.fixture(autouse=True)
def _few_candidate_models(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the architecture search to FEW_MODELS (about 1 s per search with all 28)."""
    if request.function.__name__ not in WHOLE_ZOO:
        from figkd.models.registry import MODELS

        monkeypatch.setattr(MODELS, "names", lambda pattern=None: list(FEW_MODELS))


def _tiny(width: int = 4, num_classes: int = 10, seed: int = 0) -> ZooModel:
    torch.manual_seed(seed)
    return create_model("tiny_cnn", num_classes=num_classes, width=width)


def _saved_state(width: int = 4, num_classes: int = 10, seed: int = 0) -> dict[str, Tensor]:
    """A state dict with non-default BN statistics, so a skipped buffer would show."""
    model = _tiny(width, num_classes, seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for value in state.values():
        if value.is_floating_point():
            value.add_(torch.rand_like(value))
        else:
            value.fill_(7)
    return state


def _assert_holds(model: nn.Module, saved: dict[str, Tensor]) -> None:
    """Every tensor of ``model`` equals the one that was saved, bit for bit."""
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key


def _mismatch(model: ZooModel, state: object, **options: object) -> CheckpointMismatchError:
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, state, **options)  # type: ignore[arg-type]
    return info.value


# --------------------------------------------------------------------------- round trips


def test_round_trip_with_an_upper_case_digest_checks_every_tensor(tmp_path: Path) -> None:
    """A file under "model" with a "model"-less sibling; the digest is hashlib's, given in
    upper case (hex digests are case-insensitive)."""
    saved = _saved_state()
    path = tmp_path / "teacher.pth"
    torch.save({"model": saved, "epoch": 240}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    model = _tiny(seed=1)
    info = load_checkpoint(model, path, sha256=digest.upper())
    _assert_holds(model, saved)
    assert info == CheckpointInfo(source=str(path), sha256=digest, num_classes=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.num_classes = 3  # type: ignore[misc]


def test_a_string_under_model_is_skipped_for_the_state_dict(tmp_path: Path) -> None:
    """{"model": "<arch name>", "state_dict": {...}}: the tensors are under "state_dict"."""
    saved = _saved_state()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": "tiny_cnn", "state_dict": saved}, path)
    model = _tiny(seed=1)
    load_checkpoint(model, path)
    _assert_holds(model, saved)


def test_prefixes_are_stripped_only_when_every_key_has_them() -> None:
    t = torch.zeros(1)
    assert extract_state_dict({"module.a": t, "module.b": t}).keys() == {"a", "b"}
    assert extract_state_dict({"module.a": t, "b": t}).keys() == {"module.a", "b"}
    assert extract_state_dict({"_orig_mod.a": t}).keys() == {"a"}


def test_source_names_an_already_loaded_dict() -> None:
    saved = _saved_state()
    model = _tiny(seed=1)
    info = load_checkpoint(model, saved, source=Path("runs/a/teacher.pt"))
    _assert_holds(model, saved)
    assert info.source == "runs/a/teacher.pt" and info.sha256 is None
    error = _mismatch(_tiny(num_classes=5), saved, source="runs/a/teacher.pt")
    assert error.problem.startswith("checkpoint runs/a/teacher.pt has 10 classes")


def test_digest_of_a_loaded_dict_is_refused() -> None:
    with pytest.raises(ValueError, match="pass the checkpoint's path, not an already-loaded"):
        load_checkpoint(_tiny(), _saved_state(), sha256="0" * 64)


def test_strict_is_the_default_and_non_strict_loads_what_fits() -> None:
    """An extra key fails the default (strict) load; strict=False ignores it and a missing
    key, and loads every tensor that is there."""
    saved = _saved_state()
    extra = {**saved, "head.extra": torch.ones(2)}
    error = _mismatch(_tiny(seed=1), extra)
    assert "1 unexpected keys [head.extra]" in str(error)
    partial = {k: v for k, v in saved.items() if k != "stem.1.running_var"}
    model = _tiny(seed=1)
    own_var = model.get_buffer("stem.1.running_var").clone()
    load_checkpoint(model, {**partial, "head.extra": torch.ones(2)}, strict=False)
    _assert_holds(model, {**partial, "stem.1.running_var": own_var})


def test_missing_bn_counters_are_not_a_mismatch() -> None:
    """Checkpoints from before PyTorch 0.4.1 have no num_batches_tracked: they load."""
    saved = {k: v for k, v in _saved_state().items() if not k.endswith("num_batches_tracked")}
    model = _tiny(seed=1)
    load_checkpoint(model, saved)
    for key, value in saved.items():
        assert torch.equal(model.state_dict()[key], value)


def test_exclude_classifier_keeps_the_models_own_head() -> None:
    saved = _saved_state(num_classes=100)
    model = _tiny(num_classes=10, seed=1)
    own_head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("fc.")}
    info = load_checkpoint(model, saved, exclude_classifier=True)
    assert info.skipped == ("fc.weight", "fc.bias") and info.num_classes == 100
    _assert_holds(model, {**{k: v for k, v in saved.items() if not k.startswith("fc.")},
                          **own_head})


# --------------------------------------------------------------------------- mismatch errors


def test_error_defaults_when_built_with_a_message_only() -> None:
    error = CheckpointMismatchError("the whole message")
    assert error.problem == "the whole message" and error.kind == "" and error.fits == ()
    assert error.same_layers is False


def test_class_count_error_has_the_classes_kind_and_no_advice_in_problem() -> None:
    error = _mismatch(_tiny(num_classes=5), _saved_state(num_classes=10))
    assert error.kind == "classes" and error.fits == () and error.same_layers is False
    assert error.problem == (
        "checkpoint <state dict> has 10 classes (fc.weight (10, 16)) but the model 'tiny_cnn' "
        "(TinyCNN) was built with num_classes=5"
    )
    assert str(error) == error.problem + (
        "; use a checkpoint trained on 5 classes, or exclude_classifier=True to keep the "
        "model's own classifier"
    )


def test_other_classes_and_other_layers_is_an_architecture_error() -> None:
    """The class count differs too, but the layers say more: kind "architecture"."""
    error = _mismatch(create_model("resnet8x4", num_classes=5), _saved_state(num_classes=10))
    assert error.kind == "architecture"


def test_non_strict_class_check_ignores_extra_keys() -> None:
    """strict=False: an unexpected key does not hide that only the classes differ."""
    state = {**_saved_state(num_classes=10), "head.extra": torch.ones(2)}
    assert _mismatch(_tiny(num_classes=5), state, strict=False).kind == "classes"
    assert _mismatch(_tiny(num_classes=5), state).kind == "architecture"


def test_file_of_another_zoo_model_names_it() -> None:
    """resnet20's tensors (10 classes) do not fit resnet8x4; they fit resnet20 exactly."""
    torch.manual_seed(0)
    state = create_model("resnet20", num_classes=10).state_dict()
    error = _mismatch(create_model("resnet8x4", num_classes=10), state)
    assert error.kind == "architecture" and error.fits == ("resnet20",)
    assert error.same_layers is False
    assert str(error).endswith("; the file fits 'resnet20': build that model instead")


def test_same_layers_at_other_sizes_points_at_the_options() -> None:
    """tiny_cnn width 4 into width 8: same names, other shapes; neither is the default 16."""
    error = _mismatch(_tiny(width=8), _saved_state(width=4))
    assert error.kind == "architecture" and error.fits == () and error.same_layers is True
    assert str(error).endswith(
        "; the file has this model's layers at other sizes: check the model's options"
    )


def test_file_that_fits_nothing_says_so() -> None:
    error = _mismatch(create_model("resnet8x4", num_classes=10), _saved_state(width=4))
    assert error.fits == () and error.same_layers is False
    assert str(error).endswith(
        "; check the architecture (the file fits no zoo model with default options)"
    )


def test_default_width_file_fits_its_own_arch_and_is_not_offered_back() -> None:
    """tiny_cnn at its default width 16 into a width-8 tiny_cnn: the own name is not
    suggested; the advice is to check the options."""
    error = _mismatch(_tiny(width=8), _saved_state(width=16))
    assert error.fits == () and error.same_layers is True
    assert "check the model's options" in str(error)


def test_model_without_a_registry_name_is_described_by_its_class() -> None:
    error = _mismatch(TinyCNN(num_classes=10, width=8), _saved_state(width=4))
    assert "does not fit the model (TinyCNN): " in error.problem


def test_model_without_in_channels_is_matched_against_rgb_models() -> None:
    """A ZooModel subclass that never sets in_channels: the search assumes 3 (RGB) inputs, so
    a default tiny_cnn file (3 input channels) is recognised."""

    class Bare(ZooModel):
        def __init__(self) -> None:
            super().__init__()
            self.num_classes = 10
            self.head = nn.Linear(2, 10)

    error = _mismatch(Bare(), _saved_state(width=16))
    assert error.fits == ("tiny_cnn",)


@pytest.mark.parametrize("key", ["arch", "model_name"])
def test_recorded_architecture_keys_are_quoted(key: str) -> None:
    error = _mismatch(_tiny(width=8), {"state_dict": _saved_state(width=4), key: "tiny_w4"})
    assert f"(recorded {key}='tiny_w4') does not fit" in error.problem


def test_long_key_lists_show_eight_names_then_dots() -> None:
    """9 missing keys: the first 8 in the model's order, then "..."; 8 missing: no dots."""
    saved = _saved_state()
    names = [k for k in saved if not k.endswith("num_batches_tracked") and not k.startswith("fc")]
    nine = {k: v for k, v in saved.items() if k not in names[:9]}
    message = str(_mismatch(_tiny(seed=1), nine))
    assert f"9 missing keys [{', '.join(names[:8])}, ...]" in message
    eight = {k: v for k, v in saved.items() if k not in names[:8]}
    message = str(_mismatch(_tiny(seed=1), eight))
    assert f"8 missing keys [{', '.join(names[:8])}]" in message


def test_fitting_architectures_ignores_counters_and_reads_the_file_classes() -> None:
    """resnet20 at 7 classes, with or without BN counters; a 1-channel tiny_cnn."""
    torch.manual_seed(0)
    state = create_model("resnet20", num_classes=7).state_dict()
    no_counters = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert fitting_architectures(no_counters) == ("resnet20",)
    gray = create_model("tiny_cnn", num_classes=3, in_channels=1).state_dict()
    assert fitting_architectures(gray, in_channels=1) == ("tiny_cnn",)
    assert fitting_architectures(gray) == ()
    assert fitting_architectures({**gray, "fc.weight": torch.zeros(3)}, in_channels=1) == ()


# --------------------------------------------------------------------------- bad files


def test_file_holding_a_list_is_named_with_its_type(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match=r"list\.pt holds a list, not a dict"):
        read_checkpoint_file(path)


def test_pickled_module_error_keeps_torchs_reason(tmp_path: Path) -> None:
    """torch's message says which global it refused ("Unsupported global: ... TinyCNN")."""
    path = tmp_path / "pickled.pt"
    torch.save({"model": _tiny()}, path)
    with pytest.raises(ValueError, match=r"save a state_dict.*\(.*Unsupported global.*TinyCNN"):
        read_checkpoint_file(path)


def test_junk_file_error_keeps_the_first_line_of_torchs_own_error(tmp_path: Path) -> None:
    """Expected reason: what torch.load itself raises on the same bytes (its first line)."""
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\nsecond line")
    with pytest.raises(Exception) as raw:  # torch raises several types on junk
        torch.load(path, weights_only=True)
    reason = str(raw.value).strip().splitlines()[0]
    with pytest.raises(ValueError) as info:
        read_checkpoint_file(path)
    assert str(info.value).endswith(f"; copy it again or retrain it ({reason})")
    assert f"cannot read checkpoint {path}: the file is damaged" in str(info.value)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*absent.pt"):
        read_checkpoint_file(tmp_path / "absent.pt")
    with pytest.raises(FileNotFoundError, match="not found"):
        read_checkpoint_file(tmp_path)  # a folder is not a checkpoint file


def test_file_digest_is_hashlibs_over_more_than_one_chunk(tmp_path: Path) -> None:
    """A file over 3 MiB (several 1 MiB reads): the digest equals hashlib's of all bytes."""
    path = tmp_path / "big.pt"
    torch.save({"w": torch.arange(3 * 2**18 + 1, dtype=torch.float32)}, path)
    assert path.stat().st_size > 3 * 2**20
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- complexity


class Rect(ZooModel):
    """conv 2 -> 3 (3x3, padding 1, bias) then global mean and a 3 -> 4 linear."""

    native_input_size = 5

    def __init__(self) -> None:
        super().__init__()
        self.in_channels = 2
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def test_parameter_count_by_hand_and_trainable_only() -> None:
    """conv 3*2*3*3 + 3 = 57, linear 4*3 + 4 = 16: 73 in all, 16 with the conv frozen."""
    net = Rect()
    assert count_parameters(net) == 73
    net.conv.requires_grad_(False)
    assert count_parameters(net) == 73
    assert count_parameters(net, trainable_only=True) == 16


def test_macs_by_hand_for_native_square_and_rectangular_inputs() -> None:
    """MACs = H*W*3*2*9 (conv) + 3*4 (linear) for one image:
    native 5x5: 25*54 + 12 = 1362; 7x7: 49*54 + 12 = 2658; 6x10: 60*54 + 12 = 3252."""
    net = Rect().eval()
    assert count_macs(net) == 1362 and isinstance(count_macs(net), int)
    assert count_macs(net, 7) == 2658
    assert count_flops(net, (6, 10)) == 2 * 3252
    assert not net.training, "counting must restore eval mode too"


def test_counting_restores_each_modules_own_mode() -> None:
    """A training model whose BN is deliberately frozen in eval mode (a common fine-tuning
    setup) comes back exactly so: only the flags set before the count, module by module."""
    net = TinyCNN(num_classes=4, in_channels=1, width=2).train()
    frozen = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert frozen, "TinyCNN has BatchNorm layers"
    frozen[0].eval()
    before = {name: m.training for name, m in net.named_modules()}
    count_flops(net, 8)
    assert {name: m.training for name, m in net.named_modules()} == before
    assert net.training and not frozen[0].training


def test_counting_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    count_flops(Rect())
    assert capsys.readouterr().out == ""


def test_measure_defaults_to_100_classes_at_the_native_size() -> None:
    """resnet8x4 at 100 classes has 1,233,540 parameters (RepDistiller's constructor); its
    native size is CIFAR's 32 px."""
    row = measure("resnet8x4")
    assert (row.name, row.params, row.input_size, row.num_classes) == (
        "resnet8x4", 1_233_540, 32, 100)
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.params = 0  # type: ignore[misc]


def test_complexity_table_layout_and_paper_ratio() -> None:
    """vgg8: Table 15 of the FiGKD paper gives 4.02 M params and 273.43 M FLOPs;
    270,000,000 MACs / 273.43 M = 0.98746 -> "0.987".  An unknown name gets empty cells."""
    rows = [Complexity("vgg8", 4_016_328, 270_000_000, 64, 200),
            Complexity("mine", 1_500_000, 2_000_000, 32, 10)]
    assert complexity_table(rows).split("\n") == [
        "| model | input | classes | params (M) | MACs (M) |",
        "|---|---|---|---|---|",
        "| vgg8 | 64x64 | 200 | 4.02 | 270.00 |",
        "| mine | 32x32 | 10 | 1.50 | 2.00 |",
    ]
    assert complexity_table(rows, compare_paper=True).split("\n") == [
        ("| model | input | classes | params (M) | MACs (M) | paper params (M) | paper FLOPs (M)"
         " | MACs / paper |"),
        "|---|---|---|---|---|---|---|---|",
        "| vgg8 | 64x64 | 200 | 4.02 | 270.00 | 4.02 | 273.43 | 0.987 |",
        "| mine | 32x32 | 10 | 1.50 | 2.00 |  |  |  |",
    ]
