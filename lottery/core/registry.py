"""Named registries whose built-in entries load on first use.

A built-in entry is a "package.module:attribute" path with a few facts the command line needs
(what a criterion needs, say); the module is imported only when the entry is used. So a parser
lists and checks names without importing torch, and a user's own entry (`register`, or plain
item assignment) sits beside the built-ins on the same footing.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(MutableMapping[str, T], Generic[T]):
    """Names -> objects of one kind (criteria, datasets, ...), loaded lazily, with facts per name."""

    def __init__(self, kind: str, entries: Mapping[str, str | tuple[str, dict[str, Any]]]) -> None:
        """`entries`: name -> "module:attr", or ("module:attr", facts) where facts are known
        without loading (shown and checked before any import)."""
        self.kind = kind
        self._targets: dict[str, Any] = {}
        self._facts: dict[str, dict[str, Any]] = {}
        for name, entry in entries.items():
            target, facts = (entry, {}) if isinstance(entry, str) else entry
            self._targets[name], self._facts[name] = target, dict(facts)

    def register(self, name: str, obj: T, **facts: Any) -> T:
        """Add (or replace) `name` as `obj`, with its facts; returns `obj`."""
        self._targets[name], self._facts[name] = obj, facts
        return obj

    def facts(self, name: str) -> dict[str, Any]:
        """What is known about `name` without loading it."""
        self._check(name)
        return self._facts[name]

    def _check(self, name: str) -> None:
        if name not in self._targets:
            raise KeyError(f"unknown {self.kind} {name!r}; choose from {', '.join(self)}")

    def __getitem__(self, name: str) -> T:
        self._check(name)
        target = self._targets[name]
        if isinstance(target, str):  # a built-in: import its module once, keep the object
            module, _, attr = target.partition(":")
            target = self._targets[name] = getattr(importlib.import_module(module), attr)
        return target

    def __setitem__(self, name: str, obj: T) -> None:
        self.register(name, obj, **self._facts.get(name, {}))

    def __delitem__(self, name: str) -> None:
        self._check(name)
        del self._targets[name], self._facts[name]

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self)})"
