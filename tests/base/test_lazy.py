"""A lazy package surface: names load on first use, and a submodule never shadows its own name."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from base.lazy import lazy_surface


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package `lazypkg`: `heavy` (marks itself imported), `route` exporting `route`, and
    `reader`, which imports `route` as the package's own modules do."""
    root = tmp_path / "lazypkg"
    root.mkdir()
    (root / "__init__.py").write_text(textwrap.dedent("""
        from base.lazy import lazy_surface

        __getattr__, __dir__, __all__ = lazy_surface(__name__, {
            "heavy": ["Heavy"], "route": ["route", "RouteError"], "reader": ["read"]})
    """))
    (root / "heavy.py").write_text("import sys\nsys.modules['lazypkg'].LOADED = True\n"
                                   "class Heavy:\n    pass\n")
    (root / "route.py").write_text("class RouteError(Exception):\n    pass\n\n"
                                   "def route():\n    return 'routed'\n")
    (root / "reader.py").write_text("from .route import route\n\ndef read():\n    return route()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("lazypkg")
    for name in [m for m in sys.modules if m == "lazypkg" or m.startswith("lazypkg.")]:
        del sys.modules[name]


def test_a_name_loads_its_submodule_on_first_use_only(package):
    assert "lazypkg.heavy" not in sys.modules and not hasattr(package, "LOADED")
    from lazypkg import Heavy

    assert Heavy.__module__ == "lazypkg.heavy" and package.LOADED
    assert package.__all__ == ["Heavy", "RouteError", "read", "route"]
    assert {"Heavy", "read"} <= set(dir(package))


def test_a_name_that_is_also_its_submodules_name_stays_the_function(package):
    importlib.import_module("lazypkg.reader")  # `from .route import ...` inside the package
    from lazypkg import read, route

    assert callable(route) and route() == "routed" and read() == "routed"
    assert package.route is sys.modules["lazypkg.route"].route


def test_an_unknown_name_is_an_attribute_error_naming_it(package):
    with pytest.raises(AttributeError, match="'lazypkg' has no attribute 'Nope'"):
        package.Nope
    with pytest.raises(ImportError, match="cannot import name 'Nope'"):
        exec("from lazypkg import Nope", {})


def test_a_name_listed_under_two_submodules_is_refused():
    with pytest.raises(ValueError, match="two submodules"):
        lazy_surface("somepkg", {"a": ["x"], "b": ["x"]})
