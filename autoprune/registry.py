"""A tiny explicit registry: duplicate names raise, a failed lookup lists the valid names."""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from autoprune.errors import AutopruneError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry mapping for one kind of plugin (models, data sets, scorers).

    Example:
        >>> r = Registry[int]("numbers")
        >>> r.register("one", 1)
        >>> r.get("one")
        1
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise AutopruneError(f"unknown {self.kind} {name!r}; valid names: {', '.join(sorted(self._entries))}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)
