"""A small decorator registry shared by models, datasets, pruning criteria and stages."""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Sequence, TypeVar

F = TypeVar("F")


class UnknownNameError(KeyError):
    """An unknown registry name; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class Registry(Generic[F]):
    """Maps names to callables. ``kind`` names the registry in error messages; ``hint`` is
    added to the error for an unknown name (e.g. how to add one of your own)."""

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind, self.hint = kind, hint
        self._items: dict[str, F] = {}

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[F], F]:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def deco(fn: F) -> F:
            if name in self._items and not overwrite and self._items[name] is not fn:
                raise ValueError(
                    f"{self.kind} '{name}' is already registered (by "
                    f"{self._items[name].__module__}); pick another name"
                )
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> F:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'; valid names: {', '.join(self.names())}"
                + (f" ({self.hint})" if self.hint else "")
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def values(self) -> list[F]:
        """The registered items in registration order."""
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items


def import_modules(modules: Sequence[str], *, field: str) -> None:
    """Import user modules (dotted names) so that their registrations run; ``field`` names
    the config field that listed them in the error for a module that cannot be found."""
    if isinstance(modules, str):
        modules = [modules]
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
                raise  # the module exists but one of its own imports is missing
            raise ModuleNotFoundError(
                f"cannot import module '{module}' (listed in {field}): no module named "
                f"'{e.name}'; put its directory on PYTHONPATH or install it", name=e.name,
            ) from None
