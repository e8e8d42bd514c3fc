"""Shared pieces of the float64 functional re-implementations in ``test_models_edges.py`` and
``test_models_zoo_edges.py``: the model's weights by state-dict key (each reference reads the
tensors it needs, and ``unread()`` then shows any layer the reference does not have), and the
comparison of a model's features with a reference's."""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from figkd.models import Features, ZooModel

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def submodule(module: nn.Module, path: str, kind: type[ModuleT]) -> ModuleT:
    """The submodule of ``module`` at ``path`` (as in its state-dict keys), checked to be a
    ``kind``: references read the parameters of layers that networks and losses nest."""
    part = module.get_submodule(path)
    assert isinstance(part, kind), (path, type(part))
    return part


class Weights:
    """The model's parameters and buffers by state-dict key, remembering which were read."""

    def __init__(self, model: nn.Module) -> None:
        self.tensors = {k: v for k, v in model.state_dict().items()
                        if not k.endswith("num_batches_tracked")}
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Tensor:
        self.read.add(key)
        return self.tensors[key]

    def bn(self, x: Tensor, prefix: str) -> Tensor:
        """Eval-mode BatchNorm with the running statistics and PyTorch's default eps."""
        return F.batch_norm(
            x, self[f"{prefix}.running_mean"], self[f"{prefix}.running_var"],
            self[f"{prefix}.weight"], self[f"{prefix}.bias"], training=False, eps=1e-5,
        )

    def conv_bn(self, x: Tensor, prefix: str, conv_key: str, bn_key: str, stride: int = 1,
                padding: int = 0, groups: int = 1) -> Tensor:
        """A bias-free conv followed by its BatchNorm (no activation)."""
        y = F.conv2d(x, self[f"{prefix}{conv_key}.weight"], stride=stride, padding=padding,
                     groups=groups)
        return self.bn(y, f"{prefix}{bn_key}")

    def unread(self) -> set[str]:
        return set(self.tensors) - self.read


def close(actual: Tensor, expected: Tensor) -> None:
    """Equal up to float64 rounding, relative to the largest value compared."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-10 * scale)


def check_features(model: ZooModel, x: Tensor, ref: Features) -> None:
    """The model's logits and every ``forward_features`` entry equal the reference's."""
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    close(logits, ref["logits"])
    for key in ("logits", "embedding", "pooled_map", "stem"):
        close(feats[key], ref[key])
    assert len(feats["stages"]) == len(ref["stages"])
    assert len(feats["preact_stages"]) == len(ref["preact_stages"])
    for ours, theirs in zip(feats["stages"], ref["stages"], strict=True):
        close(ours, theirs)
    for ours, theirs in zip(feats["preact_stages"], ref["preact_stages"], strict=True):
        close(ours, theirs)
