"""What every `lethe` command shares: its config, its output (--json or lines), argparse value
types (a bad value is a usage error, exit 2), and training progress bars."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import Config, load_config


def config_of(args, **overrides) -> Config:
    """The command's config: --config FILE, the environment, then flags (`overrides`)."""
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
