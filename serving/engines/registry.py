"""Engines by name: one `register_engine(...)` line per engine in `__init__.py`."""

from __future__ import annotations

from base import Registry

from ..errors import UsageError
from .base import Engine


class UnknownEngineError(UsageError, KeyError):
    """No engine is registered under the requested name."""


ENGINES: Registry[type[Engine]] = Registry("engine", UsageError, UnknownEngineError)
engine_class = ENGINES.get
engine_names = ENGINES.names


def register_engine(name: str, impl_cls: type[Engine]) -> None:
    ENGINES.register(name, impl_cls)
