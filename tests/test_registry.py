"""figkd.registry: aliases, listing and helpful errors."""

from __future__ import annotations

from typing import cast

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

    # The decorator form registers any object (here a function) under the given name.
    entries = cast("Registry[object]", registry)

    @entries.register("decorated")
    def entry() -> None: ...

    assert entries.get("decorated") is entry


def _suggestions(names: list[str], query: str) -> str:
    registry: Registry[int] = Registry("widget")
    for number, name in enumerate(names):
        registry.add(name, number)
    with pytest.raises(UnknownNameError) as info:
        registry.get(query)
    # "unknown widget 'abcd'. Did you mean ...? Valid widget names: ..." -> the middle part
    return str(info.value).split(f"{query!r}.", 1)[1].split(" Valid ", 1)[0].strip()


def test_suggestions_are_the_three_closest_at_half_similarity_or_more() -> None:
    """difflib's ratio is 2M/T: "abcd" vs "abc?" shares 3 of 8 letters -> 0.75, vs "abxy"
    shares 2 -> 0.5 (just enough), vs "zzzz" none.  Ties go to the larger string, and at most
    three names are offered."""
    assert _suggestions(["abcv", "abcw", "abcx", "abcz"], "abcd") == (
        "Did you mean 'abcz', 'abcx', 'abcw'?"
    )
    assert _suggestions(["abxy", "zzzz"], "abcd") == "Did you mean 'abxy'?"
    assert _suggestions(["zzzz"], "abcd") == ""


def test_register_without_a_name_needs_one_from_the_entry() -> None:
    registry: Registry[object] = Registry("widget")

    @registry.register()
    def resnet8() -> None: ...

    assert registry.get("resnet8") is resnet8
    with pytest.raises(TypeError, match=r"widget entry 7 has no __name__; register it with name="):
        registry.register()(7)
    registry.register("seven")(7)
    assert registry.get("seven") == 7
