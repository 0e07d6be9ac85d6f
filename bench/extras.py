"""What benchmarks need beyond `make setup` (`make bench-setup` installs it), checked before any
long work: a missing plot library must not end a 30-minute run at its plot."""

from __future__ import annotations

import importlib.util
import sys

# plots; MovieLens-100K as shipped inside recbole; the API fuzz (bench_fuzz.py)
EXTRAS = ("matplotlib", "recbole", "schemathesis", "hypothesis")


def require_extras(*modules: str) -> None:
    """Exit at once, naming what is missing and how to install it."""
    unknown = set(modules) - set(EXTRAS)
    if unknown:
        raise ValueError(f"not a benchmark extra: {sorted(unknown)}; extras: {EXTRAS}")
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"{sys.argv[0]}: {', '.join(missing)} missing: run `make bench-setup` first")
