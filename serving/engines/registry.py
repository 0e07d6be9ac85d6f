"""Engines by name: one `register_engine(...)` line per engine in `__init__.py`."""

from __future__ import annotations

from ..errors import UsageError
from .base import Engine

_ENGINES: dict[str, type[Engine]] = {}


class UnknownEngineError(UsageError, KeyError):
    """No engine is registered under the requested name."""


def register_engine(*, name: str, impl_cls: type[Engine]) -> None:
    if name in _ENGINES:
        raise UsageError(f"engine {name!r} is already registered ({_ENGINES[name].__name__})")
    _ENGINES[name] = impl_cls


def engine_class(name: str) -> type[Engine]:
    try:
        return _ENGINES[name]
    except KeyError as e:
        raise UnknownEngineError(
            f"unknown engine {name!r}; registered engines: {', '.join(sorted(_ENGINES))}"
        ) from e


def engine_names() -> list[str]:
    return sorted(_ENGINES)
