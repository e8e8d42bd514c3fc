"""The model registry: names (and the paper's spellings as aliases) -> constructors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from figkd.models.base import ZooModel
from figkd.registry import Registry

ModelFactory = Callable[..., ZooModel]

MODELS: Registry[ModelFactory] = Registry("model")


def register_model(
    name: str | None = None, *, aliases: tuple[str, ...] | list[str] = ()
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering a constructor taking ``num_classes`` and ``in_channels``."""
    return MODELS.register(name, aliases=aliases)


def create_model(name: str, num_classes: int = 100, **kwargs: Any) -> ZooModel:
    """Build the model registered as ``name`` (or an alias of it).

    Unknown names raise :class:`figkd.registry.UnknownNameError` listing the
    closest valid names.
    """
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    canonical = MODELS.canonical(name)
    model = MODELS.get(canonical)(num_classes=int(num_classes), **kwargs)
    model.arch = canonical
    return model


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted canonical names, optionally filtered by a case-insensitive glob (``"resnet*"``)."""
    return MODELS.names(pattern)


def aliases_of(name: str) -> list[str]:
    """All aliases that resolve to ``name``'s canonical entry."""
    canonical = MODELS.canonical(name)
    return sorted(a for a, target in MODELS.aliases().items() if target == canonical)
