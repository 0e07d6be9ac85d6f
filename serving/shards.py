"""A shard store as the config describes it: the one place a command or the evaluation creates
one (partitioner, owner grouping, seed, base model and training config from `config`)."""

from __future__ import annotations

from pathlib import Path

from adapters import ShardStore

from .model import base_model_record, resolve_model, sentence_embedder


def create_store(config, root: Path, samples, validation=None, *, shards: int | None = None,
                 embed=None) -> ShardStore:
    """A new shard store at `root`: `samples` partitioned as `config.shards` says (or into
    `shards`), for the configured model and training; `embed`: the configured embedder."""
    model_path = resolve_model(config.model.source, config.home_dir)
    return ShardStore.create(
        root, samples, embed or sentence_embedder(config.guard.embedder, config.home_dir),
        shards=shards or config.shards.count, partitioner=config.shards.partitioner,
        group_by_owner=config.shards.group_by_owner, seed=config.shards.seed,
        model_path=model_path, base_model=base_model_record(model_path),
        train_config=config.train, validation=validation)
