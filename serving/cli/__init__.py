"""The `lethe` command line: one module per command group, each adding its commands here.

    serve.py    serve, model prepare, data synth
    shards.py   train, shards, retrain, forget-samples, route (APA)
    guard.py    guard train | check | eval | tune (ECO)
    forget.py   forget, queue, worker
    receipt.py  receipt verify (a forget receipt, offline)
    evaluate.py eval tofu (the lifecycle scored on TOFU)
    demo.py     demo (the whole product on fictitious people)

Errors: a `LetheError` (every error of Lethe, base/errors.py) exits with its own code (2: change
the command or config; 1: it ran and failed), an OSError with 1, each with a one-line message on
stderr.

Each module imports what a command needs inside the command, so building the parser imports
nothing heavy: `lethe --help` and `lethe receipt verify` start at once.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError, LetheError
from . import demo, evaluate, forget, guard, receipt, serve, shards

EXIT_FAILURE = 1  # the command ran and failed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lethe", description="Serve a customised LLM whose "
                                     "training data can be forgotten on request.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (serve, shards, guard, forget, receipt, evaluate, demo):
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as e:
        print(f"lethe: config error: {e}", file=sys.stderr)
        return e.exit_code
    except LetheError as e:
        print(f"lethe: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"lethe: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    return 0
