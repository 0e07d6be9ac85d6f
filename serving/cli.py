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

import time  # noqa: E402
from dataclasses import asdict  # noqa: E402

from adapters import (  # noqa: E402
    LineageError, MixtureError, RegistryError, RouteError, SampleFormatError, TrainingError,
    UnknownSampleError)
from guard import CorruptionError, GuardError, PromptFileError  # noqa: E402

from .argtypes import positive_int  # noqa: E402
from .config import ConfigError, load_config  # noqa: E402
from .engines.base import EngineError  # noqa: E402
from .forget_cli import ForgetClientError, add_forget_commands  # noqa: E402
from .guard_cli import add_guard_commands, config_overrides as guard_overrides  # noqa: E402
from .model import ModelError  # noqa: E402
from .queue import QueueError  # noqa: E402

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


def _emit(args, payload: dict, lines: list[str]) -> None:
    print(json.dumps(payload, indent=2) if args.json else "\n".join(lines))


def _progress(shard: int):
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


def _store(config):
    from adapters import ShardStore

    return ShardStore(config.store_dir, mixture_cache=config.route.mixture_cache)


def _report_results(args, results, seconds: float, verb: str) -> None:
    payload = {"shards": [asdict(r) for r in results], "seconds": round(seconds, 2)}
    lines = [f"shard {r.shard}: {r.samples} samples -> version {r.version or '(none: empty)'}"
             + (f" (was {r.previous})" if r.previous and r.previous != r.version else
                " (unchanged)" if r.previous else "")
             + f", {r.steps} steps, {r.seconds:.1f} s" for r in results]
    _emit(args, payload, lines + [f"{verb} {len(results)} shard(s) in {seconds:.1f} s"])


def cmd_train(args) -> None:
    from adapters import ShardStore, read_samples
    from guard import SentenceEmbedder

    from .model import base_model_record, resolve_model

    config = _config(args, **{"shards.data": args.data, "shards.validation": args.validation,
                              "shards.count": args.shards, "train.max_steps": args.max_steps})
    if config.shards.data is None:
        raise ConfigError("no training data: pass --data FILE or set shards.data")
    start = time.perf_counter()
    samples = read_samples(config.shards.data)
    validation = read_samples(config.shards.validation) if config.shards.validation else None
    model_path = resolve_model(config.model.source, config.home_dir)
    store = ShardStore.create(
        config.store_dir, samples, SentenceEmbedder(), shards=config.shards.count,
        partitioner=config.shards.partitioner, group_by_owner=config.shards.group_by_owner,
        seed=config.shards.seed, model_path=model_path, base_model=base_model_record(model_path),
        train_config=config.train, validation=validation)
    results = store.train(store.lineage.shard_ids(), _progress)
    _report_results(args, results, time.perf_counter() - start, "trained")


def cmd_shards(args) -> None:
    store = _store(_config(args))
    rows, versions = [], {v.shard: v for v in store.current_versions()}
    for row in store.lineage.shard_table():
        version = versions.get(row["shard"])
        rows.append({**row, "version": version.id if version else None,
                     "created_at": version.manifest["created_at"] if version else None})
    _emit(args, {"store": str(store.root), "shards": rows}, [
        f"shard {r['shard']}: version {r['version'] or '(none)'}, {r['samples']} samples, "
        f"{r['forgotten']} forgotten" + (", QUARANTINED" if r["quarantined"] else "")
        for r in rows])


def cmd_retrain(args) -> None:
    store = _store(_config(args))
    unknown = sorted(set(args.shard) - set(store.lineage.shard_ids()))
    if unknown:
        raise LineageError(f"unknown shard(s) {unknown}; the store has {store.lineage.shard_ids()}")
    start = time.perf_counter()
    results = store.train(sorted(set(args.shard)), _progress)
    store.sweep_mixtures()
    _report_results(args, results, time.perf_counter() - start, "retrained")


def cmd_forget_samples(args) -> None:
    store = _store(_config(args))
    start = time.perf_counter()
    results = store.forget_samples(args.id, _progress)
    store.sweep_mixtures()
    _report_results(args, results, time.perf_counter() - start, "retrained")


def cmd_route(args) -> None:
    from adapters import mixture_name
    from guard import SentenceEmbedder

    config = _config(args)
    store = _store(config)
    route = store.effective_route(config.route)
    weights = store.weights(SentenceEmbedder()([args.prompt])[0], route)
    name = mixture_name([(store.registry.current(k), w) for k, w in weights.items()]) \
        if weights else None
    _emit(args, {"scheme": route.scheme, "weights": {str(k): w for k, w in weights.items()},
                 "mixture": name},
          [f"scheme {route.scheme}"] + [f"shard {k}: {w:.3f}" for k, w in weights.items()]
          + [f"mixture {name or '(none: base model)'}"])


def _with_config(func, overrides):
    """Adapt func(args, config, emit) to the func(args) the parser calls."""
    def run(args) -> None:
        func(args, _config(args, **overrides(args)),
             lambda payload, lines: _emit(args, payload, lines))
    return run


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
    synth.add_argument("--people", type=positive_int, required=True)
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--facts", type=int, choices=range(1, 6), default=5,
                       help="facts per person")
    synth.add_argument("--json", action="store_true")
    synth.set_defaults(func=cmd_data_synth)

    def command(subparsers, name: str, func, help: str) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help)
        p.add_argument("--config", type=Path, help="YAML config (keys of configs/default.yaml)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        return p

    train = command(sub, "train", cmd_train, "partition the data into shards, train and publish "
                    "every shard adapter (APA)")
    train.add_argument("--data", type=Path, help="samples JSONL (overrides shards.data)")
    train.add_argument("--validation", type=Path,
                       help="validation samples for APA's weights (overrides shards.validation)")
    train.add_argument("--shards", type=positive_int, help="overrides shards.count")
    train.add_argument("--max-steps", type=positive_int, help="overrides train.max_steps")
    command(sub, "shards", cmd_shards, "list shards: current version, sizes, quarantine")
    retrain = command(sub, "retrain", cmd_retrain, "retrain shards from scratch and publish them")
    retrain.add_argument("--shard", type=int, action="append", required=True,
                         help="shard id (repeatable)")
    forget = command(sub, "forget-samples", cmd_forget_samples,
                     "forget samples now: tombstone them and retrain the shards that held them")
    forget.add_argument("--id", nargs="+", required=True, help="sample ids")
    route = command(sub, "route", cmd_route, "the shard weights and mixture a prompt would get")
    route.add_argument("prompt")
    add_guard_commands(sub, lambda subparsers, name, func, help: command(
        subparsers, name, _with_config(func, guard_overrides), help))
    add_forget_commands(sub, lambda subparsers, name, func, help: command(
        subparsers, name, _with_config(func, lambda args: {}), help))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as e:
        print(f"lethe: config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ModelError, EngineError, OSError, LineageError, UnknownSampleError, RegistryError,
            TrainingError, SampleFormatError, RouteError, MixtureError, GuardError,
            PromptFileError, CorruptionError, ForgetClientError, QueueError) as e:
        print(f"lethe: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
