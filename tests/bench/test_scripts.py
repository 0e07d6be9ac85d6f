"""Every benchmark runs after `make setup` alone, or fails at once saying what to install:
each module a `bench/` script imports (at the top or inside a function) is installed here, or
is a benchmark extra that the script checks before any long work."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))
LOCAL = {p.stem for p in SCRIPTS}  # bench/ is the script's own folder on sys.path


def _extras() -> tuple[str, ...]:
    spec = importlib.util.spec_from_file_location("bench_extras", BENCH / "extras.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EXTRAS


def imported(script: Path) -> set[str]:
    """Top-level names of every module the script imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            names.add(node.module)
    return names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_what_a_benchmark_imports_is_installed_or_a_checked_extra(script):
    missing = {name.split(".")[0] for name in imported(script) - LOCAL
               if importlib.util.find_spec(name.split(".")[0]) is None
               or importlib.util.find_spec(name) is None}
    assert missing <= set(_extras()), f"{script.name} needs {missing - set(_extras())}"


@pytest.mark.parametrize("script", [s for s in SCRIPTS if {m.split(".")[0] for m in imported(s)}
                                    & set(_extras())], ids=lambda p: p.name)
def test_a_benchmark_without_its_extras_stops_at_once_naming_the_fix(script):
    # As `python bench/X.py` runs it, with the extras hidden (find_spec and import then fail).
    hide = ", ".join(f"{m!r}: None" for m in _extras())
    run = subprocess.run(
        [sys.executable, "-c", f"import runpy, sys; sys.modules.update({{{hide}}}); "
         f"sys.argv = [{str(script)!r}]; sys.path.insert(0, {str(BENCH)!r}); runpy.run_path({str(script)!r}, run_name='__main__')"],
        capture_output=True, text=True, timeout=120, cwd=BENCH.parent)
    assert run.returncode == 1
    assert "missing: run `make bench-setup` first" in run.stderr
