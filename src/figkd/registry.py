"""Name -> constructor registries shared by losses, models and datasets.

One small class instead of three hand-rolled dicts, so every registry gives the
same behaviour: aliases, pattern listing, and an error that suggests the
nearest valid names when a name is misspelt.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """Raised when a registry lookup fails; the message lists close matches."""


class Registry(Generic[T]):
    """A case-sensitive mapping from canonical names (plus aliases) to entries."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self, name: str | None = None, *, aliases: tuple[str, ...] | list[str] = ()
    ) -> Callable[[T], T]:
        """Decorator that registers an entry under ``name`` (default: its ``__name__``)."""

        def decorator(entry: T) -> T:
            key = name if name is not None else getattr(entry, "__name__", None)
            if not isinstance(key, str):
                raise TypeError(
                    f"{self.kind} entry {entry!r} has no __name__; register it with name=..."
                )
            self.add(key, entry, aliases=aliases)
            return entry

        return decorator

    def add(self, name: str, entry: T, *, aliases: tuple[str, ...] | list[str] = ()) -> None:
        """Register ``entry`` under ``name``; re-using a taken name is an error."""
        for key in (name, *aliases):
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} name {key!r} is already registered")
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        """Resolve an alias to its canonical name, or raise with suggestions."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise UnknownNameError(self._unknown_message(name))

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted canonical names, optionally filtered by a shell-style ``pattern``."""
        names = sorted(self._entries)
        if pattern is None:
            return names
        return [n for n in names if fnmatch.fnmatchcase(n.lower(), pattern.lower())]

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def _unknown_message(self, name: str) -> str:
        candidates = list(self._aliases) + list(self._entries)  # canonical names win
        lowered = {c.lower(): c for c in candidates}
        close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(lowered[c]) for c in close)}?" if close else ""
        return (
            f"unknown {self.kind} {name!r}.{hint} "
            f"Valid {self.kind} names: {', '.join(self.names())}."
        )
