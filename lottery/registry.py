"""Named registries whose built-in entries load on first use.

A built-in entry is a "package.module:attribute" path with a few facts the command line needs
(what a criterion needs, say); the module is imported only when the entry is used. So a parser
lists and checks names without importing torch, and a user's own entry (`register`, or plain
item assignment) sits beside the built-ins on the same footing. An object that is not registered
can still be named by its own "package.module:attribute" path (`load`), which is also how a run
records a function it was given directly (`path_of`).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(MutableMapping[str, T], Generic[T]):
    """Names -> objects of one kind (criteria, datasets, ...), loaded lazily, with facts per name."""

    def __init__(self, kind: str, entries: Mapping[str, Any]) -> None:
        """`entries`: name -> "module:attr", ("module:attr", facts) where facts are known without
        loading (shown and checked before any import), or the object itself."""
        self.kind = kind
        self._targets: dict[str, Any] = {}
        self._facts: dict[str, dict[str, Any]] = {}
        for name, entry in entries.items():
            target, facts = entry if isinstance(entry, tuple) else (entry, {})
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

    def load(self, name: str) -> T:
        """The entry `name`, or else the object a "package.module:attribute" name points to."""
        if name in self or ":" not in name:
            return self[name]
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise KeyError(f"cannot load {self.kind} {name!r}: {e}") from None

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


def path_of(obj: Any) -> str:
    """The "package.module:attribute" name that `Registry.load` finds `obj` by, for a function
    given directly; refused for what cannot be found again (a lambda, a nested function)."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if module and name.isidentifier():
        try:
            if getattr(importlib.import_module(module), name, None) is obj:
                return f"{module}:{name}"
        except ImportError:
            pass
    raise ValueError(
        f"{obj!r} cannot be recorded by name: register it, or define it at the top level of an "
        "importable module"
    )
