"""A shard store as the config describes it: the one place a command, the server, the worker or
the evaluation creates or opens one (partitioner, owner grouping, seed, base model and training
config from `config`; the lineage in `store.url` when set; training on `model.device`)."""

from __future__ import annotations

from pathlib import Path

from adapters import ShardStore
from base import Database, open_database

from .model import base_model_record, resolve_model, sentence_embedder


def store_database(config) -> Database | None:
    """The lineage's database: `store.url` (shared by replicas and workers), else None (a SQLite
    file in the store)."""
    return open_database(config.store.url, config.forget.synchronous) if config.store.url else None


def open_store(config, mixtures: str = "local") -> ShardStore:
    """The configured shard store; `mixtures`: this process's mixture folder (a server's own)."""
    return ShardStore(config.store_dir, mixture_cache=config.route.mixture_cache,
                      database=store_database(config), mixtures=mixtures,
                      device=config.model.device)


def create_store(config, root: Path, samples, validation=None, *, shards: int | None = None,
                 embed=None, database: Database | None = None) -> ShardStore:
    """A new shard store at `root`: `samples` partitioned as `config.shards` says (or into
    `shards`), for the configured model and training; `embed`: the configured embedder;
    `database`: where its lineage lives (None: a SQLite file in `root`)."""
    model_path = resolve_model(config.model.source, config.home_dir)
    return ShardStore.create(
        root, samples, embed or sentence_embedder(config.guard.embedder, config.cache_dir),
        shards=shards or config.shards.count, partitioner=config.shards.partitioner,
        group_by_owner=config.shards.group_by_owner, seed=config.shards.seed,
        model_path=model_path, base_model=base_model_record(model_path),
        train_config=config.train, validation=validation, database=database,
        device=config.model.device)
