"""A package's public surface, each name imported on first use (PEP 562).

`adapters`, `guard` and `serving.forget` list what they offer in `__init__.py` as
{submodule: names}. `from adapters import Lineage` then imports adapters/lineage.py alone, not
torch through adapters/train.py: the light commands (`lethe queue`, `shards`, `forget`) start in
well under a second, where importing every module took 5-8 s on the 2-vCPU machine.

A submodule that exports its own name (adapters/route.py's `route`) is imported at once: a later
`from .route import ...` anywhere in the package would otherwise bind the package's `route` to
the module, and `from adapters import route` would hand out the module, not the function.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping, Sequence


def lazy_surface(package: str, surface: Mapping[str, Sequence[str]]
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """(__getattr__, __dir__, __all__) for `package`, whose submodule `m` provides `surface[m]`.
    A name is imported from its submodule when first read, then kept as the package's own."""
    home = {name: module for module, names in surface.items() for name in names}
    if len(home) != sum(len(names) for names in surface.values()):
        raise ValueError(f"{package}: a name is listed under two submodules")

    def load(name: str) -> object:
        value = getattr(importlib.import_module(f"{package}.{home[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __getattr__(name: str) -> object:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return load(name)

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(home))

    for module, names in surface.items():
        if module in names:  # see the module's docstring
            load(module)
    return __getattr__, __dir__, sorted(home)
