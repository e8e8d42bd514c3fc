"""figkd.registry: aliases, listing and helpful errors."""

from __future__ import annotations

import pytest

from figkd.registry import Registry, UnknownNameError


def _registry() -> Registry[int]:
    registry: Registry[int] = Registry("widget")
    registry.add("resnet8x4", 1, aliases=("ResNet8x4",))
    registry.add("resnet32x4", 2)
    registry.add("wrn_40_2", 3, aliases=("WRN-40-2",))
    return registry


def test_aliases_resolve_to_the_canonical_entry() -> None:
    registry = _registry()
    assert registry.get("ResNet8x4") == registry.get("resnet8x4") == 1
    assert registry.canonical("WRN-40-2") == "wrn_40_2"
    assert "WRN-40-2" in registry and "wrn-40-2" not in registry
    assert len(registry) == 3 and list(registry) == ["resnet32x4", "resnet8x4", "wrn_40_2"]


def test_listing_filters_by_pattern_case_insensitively() -> None:
    assert _registry().names("RESNET*") == ["resnet32x4", "resnet8x4"]
    assert _registry().names("*40*") == ["wrn_40_2"]


def test_unknown_names_suggest_the_nearest_canonical_names() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown widget 'resnet8x2'\. Did you mean 'resnet8x4'") as info:
        _registry().get("resnet8x2")
    assert isinstance(info.value, ValueError)
    assert "Valid widget names: resnet32x4, resnet8x4, wrn_40_2" in str(info.value)


def test_duplicate_names_are_refused() -> None:
    registry = _registry()
    with pytest.raises(ValueError, match="already registered"):
        registry.add("ResNet8x4", 9)

    @registry.register("decorated")
    def entry() -> None: ...

    assert registry.get("decorated") is entry
