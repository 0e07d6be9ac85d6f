"""The `lethe` command line."""

from __future__ import annotations

import os

# Before torch is imported anywhere: with OpenMP's default busy-wait, torch on 2 vCPUs stalls at
# random, 10-20x slower (DESIGN.md, measured here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from .config import ConfigError, load_config  # noqa: E402
from .engines.base import EngineError  # noqa: E402
from .model import ModelError  # noqa: E402

EXIT_USAGE = 2  # bad flags, bad config: the user must change the command
EXIT_FAILURE = 1  # the command ran and failed


def _config(args, **overrides):
    return load_config(getattr(args, "config", None), overrides=overrides)


def cmd_serve(args) -> None:
    from .server import run_server

    config = _config(args, **{"engine.name": args.engine, "server.host": args.host,
                              "server.port": args.port})
    run_server(config)


def cmd_model_prepare(args) -> None:
    from .model import model_record, resolve_model

    config = _config(args)
    path = resolve_model(config.model.source, config.home_dir)
    if args.json:
        print(json.dumps({"path": str(path), **model_record(path)}))
    else:
        print(path)


def cmd_data_synth(args) -> None:
    from adapters import synth_people, write_samples

    samples = synth_people(args.people, seed=args.seed, facts_per_person=args.facts)
    write_samples(samples, args.out)
    if args.json:
        print(json.dumps({"out": str(args.out), "people": args.people, "samples": len(samples)}))
    else:
        print(f"wrote {len(samples)} samples about {args.people} people to {args.out}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lethe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible server")
    serve.add_argument("--config", type=Path, help="YAML config (keys of configs/default.yaml)")
    serve.add_argument("--engine", choices=["vllm", "hf"], help="overrides engine.name")
    serve.add_argument("--host", help="overrides server.host")
    serve.add_argument("--port", type=int, help="overrides server.port")
    serve.set_defaults(func=cmd_serve)

    model = sub.add_parser("model", help="model provisioning").add_subparsers(
        dest="model_command", required=True)
    prepare = model.add_parser("prepare", help="convert the configured model once; print its folder")
    prepare.add_argument("--config", type=Path)
    prepare.add_argument("--json", action="store_true", help="print the provenance record as JSON")
    prepare.set_defaults(func=cmd_model_prepare)

    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command",
                                                                     required=True)
    synth = data.add_parser("synth", help="write synthetic fictitious people as samples JSONL")
    synth.add_argument("--people", type=_positive_int, required=True)
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--facts", type=int, choices=range(1, 6), default=5,
                       help="facts per person")
    synth.add_argument("--json", action="store_true")
    synth.set_defaults(func=cmd_data_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as e:
        print(f"lethe: config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ModelError, EngineError, OSError) as e:
        print(f"lethe: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
