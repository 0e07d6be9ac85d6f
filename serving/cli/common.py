"""What every `lethe` command shares: its config, its output (--json or lines), argparse value
types (a bad value is a usage error, exit 2), and training progress bars."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config


def config_of(args, **overrides) -> Config:
    """The command's config: --config FILE, the environment, then flags (`overrides`)."""
    from ..config import load_config

    return load_config(getattr(args, "config", None), overrides=overrides)


def emit(args, payload: dict, lines: list[str]) -> None:
    """--json: the payload; otherwise the lines, for a person."""
    print(json.dumps(payload, indent=2) if args.json else "\n".join(lines))


def add_command(subparsers, name: str, func, help: str) -> argparse.ArgumentParser:
    """A command with the common --config and --json flags; func(args) runs it."""
    p = subparsers.add_parser(name, help=help)
    p.add_argument("--config", type=Path, help="YAML config (keys of configs/default.yaml)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=func)
    return p


def registered(module: str, attribute: str, metavar: str) -> dict:
    """add_argument's `choices`, read from a registry (`module.attribute`: its names, or a
    function that gives them) on first use, when the flag is given: building the parser imports
    none of the registries' modules. An unknown value's error lists the names. The metavar keeps
    argparse from reading them while it builds the parser."""
    return {"choices": _Names(module, attribute), "metavar": metavar}


class _Names:
    def __init__(self, module: str, attribute: str):
        self.module, self.attribute = module, attribute

    def _names(self):
        names = getattr(importlib.import_module(self.module), self.attribute)
        return names() if callable(names) else names

    def __contains__(self, name) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def rate(text: str) -> float:
    """A false-positive rate: strictly between 0 and 0.5."""
    value = float(text)
    if not 0 < value < 0.5:
        raise argparse.ArgumentTypeError(f"must be in (0, 0.5), got {text}")
    return value


def shard_progress(shard: int):
    """A tqdm bar per shard on stderr (stdout stays clean for --json)."""
    from tqdm import tqdm

    bar = None

    def update(step: int, total: int, loss: float) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=f"shard {shard}", unit="step", file=sys.stderr)
        bar.set_postfix(loss=f"{loss:.3f}")
        bar.update(1)
        if step == total:
            bar.close()

    return update
