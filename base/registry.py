"""One registry for every extension point (engines, weighting schemes, corruptions, metrics,
partitioners, embedders, classifiers, database backends). Each package makes one `Registry` and
one `register_...` line per implementation; the registry is the single list of names: config
validation, CLI choices and error messages all read it.
"""

from __future__ import annotations

from typing import Any, Generic, Mapping, TypeVar

from pydantic import field_validator

from .errors import LetheError

T = TypeVar("T")


class Registry(Generic[T]):
    """Implementations by name, each with the registry's traits (`needs_losses=True`, ...).

    `what` names the kind in messages ("unknown corruption 'x'; registered: a, b"). `error` is
    the package's own error type, raised for a duplicate name or an undeclared trait, and
    `unknown` (default: `error`) for a name not registered, so callers catch their package's
    base. `traits`: the traits an implementation may declare, with their defaults.
    """

    def __init__(self, what: str, error: type[LetheError], unknown: type[LetheError] | None = None,
                 traits: Mapping[str, Any] | None = None):
        self.what, self.error, self.unknown_error = what, error, unknown or error
        self.defaults = dict(traits or {})
        self._impls: dict[str, T] = {}
        self._traits: dict[str, dict[str, Any]] = {}

    def register(self, name: str, impl: T, **traits: Any) -> None:
        if name in self._impls:
            raise self.error(f"{self.what} {name!r} is already registered")
        undeclared = sorted(set(traits) - set(self.defaults))
        if undeclared:
            raise self.error(f"{self.what} {name!r}: no trait {', '.join(undeclared)}; a "
                             f"{self.what} has: {', '.join(sorted(self.defaults)) or 'none'}")
        self._impls[name], self._traits[name] = impl, {**self.defaults, **traits}

    def unregister(self, name: str) -> None:
        self.get(name)
        del self._impls[name], self._traits[name]

    def get(self, name: str) -> T:
        if name not in self._impls:
            raise self.unknown_error(self.unknown(name))
        return self._impls[name]

    def trait(self, name: str, trait: str) -> Any:
        self.get(name)
        return self._traits[name][trait]

    def names(self) -> list[str]:
        return sorted(self._impls)

    def __contains__(self, name: object) -> bool:
        return name in self._impls

    def unknown(self, name: str) -> str:
        return f"unknown {self.what} {name!r}; registered: {', '.join(self.names())}"

    def check(self, name: str) -> str:
        """`name` if registered. A pydantic field validator: ValueError, which pydantic reports
        under the config key."""
        if name not in self._impls:
            raise ValueError(self.unknown(name))
        return name

    def validator(self, *fields: str):
        """A pydantic validator: each of `fields` must hold a registered name."""
        return field_validator(*fields)(lambda name: self.check(name))
