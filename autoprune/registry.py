"""A tiny explicit registry: duplicate names raise, a failed lookup lists the valid names."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable, Generic, Iterator, TypeVar

from autoprune.errors import AutopruneError, first_line

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


def import_callable(path: str, kind: str, field: str | None = None) -> Callable[..., Any]:
    """The callable named by ``package.module:attr`` (a user's model or data factory), imported now.

    The working folder is searched first, as ``python -m`` and uvicorn-style tools do, so a module beside the study
    is found without ``PYTHONPATH``. A module found nowhere is an AutopruneError saying where it was looked for;
    any error the module raises on import, or a missing or non-callable attribute, is one AutopruneError naming the
    ``kind`` of module (``"model"``, ``"data"``) and the config ``field``.

    Example:
        >>> import_callable("math:sqrt", "model")(4.0)
        2.0
    """
    module_name, _, attr = path.partition(":")
    _working_folder_first()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AutopruneError(f"cannot import {kind} module {module_name!r}: {first_line(exc)}", field=field) from None
        raise AutopruneError(f"cannot import {kind} module {module_name!r}: no module {exc.name!r} in the working "
                             f"folder ({os.getcwd()}) or on the import path; run from the folder that holds "
                             f"{exc.name.replace('.', '/')}.py, add its folder to PYTHONPATH, or install it",
                             field=field) from None
    except Exception as exc:  # noqa: BLE001 - any error the module raises on import
        raise AutopruneError(f"cannot import {kind} module {module_name!r}: {first_line(exc)}", field=field) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise AutopruneError(f"{module_name!r} has no callable {attr!r}", field=field)
    return factory


def _working_folder_first() -> None:
    """Put the working folder at the front of ``sys.path`` (once; a console script's path starts with its own bin
    folder, not the working folder)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()
