"""`lethe serve`, `lethe model prepare`, `lethe data synth`: run the server, provision the model,
make synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

from .common import add_command, config_of, emit, positive_int, registered


def cmd_serve(args) -> None:
    # The config first: a bad one is refused in a second, before the server's ~10 s of imports.
    config = config_of(args, **{"engine.name": args.engine, "server.host": args.host,
                                "server.port": args.port})
    from ..server import run_server

    run_server(config)


def cmd_model_prepare(args) -> None:
    from ..model import model_record, resolve_model

    config = config_of(args)
    path = resolve_model(config.model.source, config.home_dir)
    if args.json:
        print(json.dumps({"path": str(path), **model_record(path)}))
    else:
        print(path)


def cmd_data_synth(args) -> None:
    from adapters import synth_people, write_samples

    samples = synth_people(args.people, seed=args.seed, facts_per_person=args.facts)
    write_samples(samples, args.out)
    emit(args, {"out": str(args.out), "people": args.people, "samples": len(samples)},
         [f"wrote {len(samples)} samples about {args.people} people to {args.out}"])


def add_commands(sub) -> None:
    serve = add_command(sub, "serve", cmd_serve, "run the OpenAI-compatible server")
    serve.add_argument("--engine", **registered("serving.engines", "engine_names", "ENGINE"),
                       help="overrides engine.name")
    serve.add_argument("--host", help="overrides server.host")
    serve.add_argument("--port", type=int, help="overrides server.port")

    model = sub.add_parser("model", help="model provisioning").add_subparsers(
        dest="model_command", required=True)
    add_command(model, "prepare", cmd_model_prepare,
                "convert the configured model once; print its folder (--json: its provenance)")

    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command",
                                                                     required=True)
    synth = add_command(data, "synth", cmd_data_synth,
                        "write synthetic fictitious people as samples JSONL")
    synth.add_argument("--people", type=positive_int, required=True)
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--facts", type=int, choices=range(1, 6), default=5,
                       help="facts per person")
