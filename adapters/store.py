"""A shard store: partition, lineage, shard adapters, loss table and mixtures under one folder.

    <root>/store.json       how the store was built: model, training config, partition, hashes
    <root>/lineage.db       sample -> shard, tombstones (lineage.py); or in PostgreSQL (`database`)
    <root>/secret.key       key of the lineage's content hashes
    <root>/receipt.key      seed of the forget receipts' signing key (base/receipts.py)
    <root>/adapters/        published shard adapter versions (registry.py)
    <root>/losses/          validation loss table rows (losses.py)
    <root>/mixtures/<name>/ cached mixture adapters of one serving process (mixture.py)
    <root>/validation.jsonl, validation.npy   the validation set and its embeddings

Several machines may share one store (docs/replicas.md): `root` on shared storage,
the lineage in PostgreSQL. Which version each shard serves is the lineage's (a compare-and-set
on the shard's generation: lineage.py), so a retrain that read a sample before its tombstone
never publishes, on any store; a lock per shard, waited for at most `shard_wait` seconds, only
keeps two workers from training one shard at once.

Every shard is handled the same way, keyed by its id: training all shards and retraining one
after a forget are the same loop over a list of shard ids.

What a server needs per request is one call, `resolve` (route, then the cached mixture, pinned
until `release`); what a forget worker needs is `forget_samples` (which also releases the
requests' quarantine holds) then `receipt`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Collection

import numpy as np

from base import (FORMAT, HASH_KEY, Database, Receipt, RequestEvidence, ShardEvidence,
                  merkle_root, open_database, resolve_device, version_digest, write_atomic)

from .config import TrainConfig
from .lineage import Lineage, LineageError, id_set_hash
from .losses import LossTable, LossTableError
from .mixture import Mixture, MixtureCache
from .partition import partition
from .registry import CONFIG, WEIGHTS, AdapterRegistry, RegistryError, Version, weights_hash
from .route import RouteConfig, RouteInputs, needs_keys, needs_losses, route
from .samples import Sample, read_samples, write_samples

EmbedFn = Callable[[list[str]], np.ndarray]  # texts -> (N, d) unit vectors; passed in by callers
# progress(shard) -> per-step callback(step, total, loss), or None
ProgressFn = Callable[[int], Callable[[int, int, float], None] | None]
KEEP_VERSIONS = 1  # superseded clean versions kept per shard (for rollback); tainted ones never
# How long a retrain waits for another holder of its shard's lock before it trains anyway (the
# fence keeps that exact): a stopped holder keeps the lock, a live one takes minutes on TOFU.
SHARD_WAIT_SECONDS = 60.0

log = logging.getLogger("lethe.store")


def sample_text(sample: Sample) -> str:
    """What a sample is embedded as, for partition and routing."""
    return sample.prompt


@dataclass(frozen=True)
class ShardResult:
    shard: int
    version: str | None  # None: the shard has no live samples left and serves nothing
    previous: str | None
    previous_digest: str | None  # base.version_digest of `previous`, read before it was replaced
    samples: int
    sample_set_hash: str
    steps: int
    seconds: float


def _trained_on(manifest: dict, ids: list[str]) -> bool:
    """Whether the version of `manifest` was trained on exactly the samples `ids`: training is
    deterministic, so training on them again would publish the same weights."""
    return manifest["sample_set_hash"] == id_set_hash(ids)


def _lineage(root: Path, database: Database | None) -> Lineage:
    """The store's lineage: in `database`, else in `<root>/lineage.db`."""
    return Lineage(database or open_database(root / "lineage.db"), root / HASH_KEY)


class ShardStore:
    def __init__(self, root: Path, mixture_cache: int = 64, database: Database | None = None,
                 mixtures: str = "local", shard_wait: float = SHARD_WAIT_SECONDS,
                 device: str = "cpu"):
        """`database`: where the lineage lives (None: `<root>/lineage.db`); `mixtures`: the name
        of this process's mixture folder (each serving process its own, mixture.py);
        `shard_wait`: as SHARD_WAIT_SECONDS (the forget worker passes its lease); `device`: the
        device name (`model.device`) that shards train and their validation losses are computed
        on, resolved when the store first trains (opening a store to read it touches no GPU)."""
        self.root = Path(root)
        self.device = device
        info = self.root / "store.json"
        if not info.exists():
            raise LineageError(f"no shard store at {self.root} (run `lethe train` first)")
        self.info = json.loads(info.read_text())
        self.lineage = _lineage(self.root, database)
        self.registry = AdapterRegistry(self.root / "adapters")
        self.shard_wait = shard_wait
        self._adopt_legacy_pointers()
        self.mixtures = MixtureCache(self.root / "mixtures", mixtures, mixture_cache)
        self.losses = LossTable(self.root / "losses", self.info["validation_hash"] or "none")
        self.train_config = TrainConfig.model_validate(self.info["train_config"])
        self.model_path = Path(self.info["base_model"]["path"])
        # Fixed when the store is created: read once, not per request.
        self.validation_embeddings = (np.load(self.root / "validation.npy")
                                      if self.info["validation_hash"] else None)  # (V, d)
        self._router: RouterState | None = None  # of the versions last routed on
        self._router_lock = threading.Lock()
        self._mixture_lock = threading.Lock()  # one build per mixture; sweeps see every pin
        self._ranks: dict[str, int] = {}  # shard version id -> its LoRA rank

    @functools.cached_property
    def trained_device(self) -> str:
        """The torch device this store trains on: `device` resolved (base.resolve_device)."""
        return resolve_device(self.device)

    def _adopt_legacy_pointers(self) -> None:
        """A store published before the lineage held what each shard serves: its `CURRENT`
        files become the lineage's first publication (once, whoever comes first)."""
        for shard, version in self.registry.legacy_pointers().items():
            self.lineage.publish(shard, version, generation=0)
        self.registry.drop_legacy_pointers()

    @classmethod
    def create(cls, root: Path, samples: list[Sample], embed: EmbedFn, shards: int,
               partitioner: str, group_by_owner: bool, seed: int, model_path: Path,
               base_model: dict, train_config: TrainConfig,
               validation: list[Sample] | None = None, database: Database | None = None,
               device: str = "cpu") -> "ShardStore":
        """Partition `samples` into `shards` and record everything a retrain will need."""
        root = Path(root)
        if (root / "store.json").exists():
            raise LineageError(f"{root} already holds a shard store; use another LETHE_HOME")
        root.mkdir(parents=True, exist_ok=True)
        embeddings = embed([sample_text(s) for s in samples])  # (N, d)
        groups = [s.owner for s in samples] if group_by_owner else None
        assignment = partition(partitioner, embeddings, shards, seed, groups)
        lineage = _lineage(root, database)
        lineage.assign(samples, assignment, embeddings, shards)
        validation_hash = None
        if validation:
            write_samples(validation, root / "validation.jsonl")
            np.save(root / "validation.npy", embed([sample_text(s) for s in validation]))
            validation_hash = id_set_hash(lineage.content_hash(s) for s in validation)
        write_atomic(root / "store.json", json.dumps({
            "created_at": time.time(),
            "base_model": {**base_model, "path": str(model_path)},
            "train_config": train_config.model_dump(mode="json"),
            "partition": {"scheme": partitioner, "shards": shards, "seed": seed,
                          "group_by_owner": group_by_owner},
            "data_hash": id_set_hash(lineage.content_hash(s) for s in samples),
            "validation_hash": validation_hash,
        }, indent=2))
        return cls(root, database=database, device=device)

    @classmethod
    def derive(cls, root: Path, source: "ShardStore", without: set[str], *,
               reuse_unchanged: bool = False) -> "ShardStore":
        """A new store with `source`'s partition, base model, training config and validation
        set, holding its live samples except `without`: what an exact forget of `without` must
        reproduce, shard for shard, once trained (training is deterministic; versions are
        weight hashes). `reuse_unchanged`: a shard whose current version in `source` was trained
        on exactly the samples it keeps here (none of `without`, no tombstone awaiting a
        retrain) gets that version (trained from scratch on the same samples with the same
        seed: what training it again gives), which `train` then skips; the others are left to
        train (on `source`'s device)."""
        root = Path(root)
        if (root / "store.json").exists():
            raise LineageError(f"{root} already holds a shard store; use another LETHE_HOME")
        root.mkdir(parents=True, exist_ok=True)
        live = source.lineage.live_keys()
        if live is None:
            raise LineageError(f"{source.root} is from before routing keys; it cannot be derived")
        key_of = dict(zip(live[0], live[2]))
        kept = [(s, k) for k in source.lineage.shard_ids()
                for s in source.lineage.shard_samples(k) if s.id not in without]
        lineage = _lineage(root, None)
        keys = np.zeros((len(kept), live[2].shape[1]), dtype=np.float32)  # (N, d)
        for row, (s, _) in enumerate(kept):
            keys[row] = key_of[s.id]
        lineage.assign([s for s, _ in kept], np.array([k for _, k in kept], dtype=np.int64),
                       keys, len(source.lineage.shard_ids()))
        if source.info["validation_hash"]:
            for name in ("validation.jsonl", "validation.npy"):
                shutil.copyfile(source.root / name, root / name)
        write_atomic(root / "store.json", json.dumps({
            **source.info, "created_at": time.time(), "derived_from": str(source.root),
            "data_hash": id_set_hash(lineage.content_hash(s) for s, _ in kept)}, indent=2))
        derived = cls(root, device=source.device)
        for version in source.current_versions() if reuse_unchanged else ():
            manifest = version.manifest
            ids = [s.id for s, k in kept if k == version.shard]
            # what train skips: the same samples, trained on the same kind of device
            same_device = manifest.get("device", "cpu") == derived.trained_device
            if _trained_on(manifest, ids) and same_device:
                with derived.registry.staging() as staged:
                    for name in (CONFIG, WEIGHTS):
                        shutil.copyfile(version.path / name, staged / name)
                    stored = derived.registry.store(version.shard, staged,
                                                    {**manifest, "reused_from": str(version.path)})
                derived.lineage.publish(version.shard, stored.id,
                                        derived.lineage.generation(version.shard))
        return derived

    # --- training ----------------------------------------------------------------------------

    def train(self, shards: list[int], progress: ProgressFn = lambda shard: None
              ) -> list[ShardResult]:
        """Train each shard from scratch on its live samples and publish it. Also the retrain."""
        results = [self._train_one(k, progress(k)) for k in shards]
        self.refresh_losses()
        return results

    def _train_one(self, shard: int, progress) -> ShardResult:
        """One retrain of `shard`, under its lock from reading the live samples through publish
        and garbage collection, so that two retrains of a shard (any process, thread or command,
        on any machine that shares the lineage's database) do not train it twice over. The lock
        is waited for at most `shard_wait` seconds, then the retrain runs anyway: the generation
        fence (`_train_fenced`) is what keeps it exact, lock or none."""
        with self.lineage.database.exclusive(f"shard-{shard:04d}", self.shard_wait) as held:
            if not held:
                log.warning("shard %d: its lock was held for %.0f s by another retrain (stopped, "
                            "or slow); training it anyway, fenced by its generation", shard,
                            self.shard_wait)
            return self._train_fenced(shard, progress)

    def _train_fenced(self, shard: int, progress) -> ShardResult:
        """Train `shard` on its live samples and publish the version if no tombstone or other
        publish advanced its generation meanwhile; else train again on what is live then."""
        generation = self.lineage.generation(shard)  # first: a later tombstone fences the publish
        samples = self.lineage.shard_samples(shard)
        ids = [s.id for s in samples]
        current = self._current_or_none(shard)
        previous = current and current.id
        previous_digest = current and version_digest(current.path)  # gone after the GC below
        if current is not None and _trained_on(current.manifest, ids):
            # Already trained on exactly these samples (another worker's retrain, after the
            # same tombstones, or this retrain's own before a crash that came before its
            # garbage collection): training is deterministic, so it would publish the same
            # weights. What that retrain left is collected here.
            self._collect_garbage(shard)
            return ShardResult(shard, previous, previous, previous_digest, len(samples),
                               id_set_hash(ids), 0, 0.0)
        if not samples:
            version, steps, seconds = None, 0, 0.0
        else:
            # torch, peft, transformers: imported where a shard is trained, so that a store
            # opened to read (routing, `lethe shards`) starts without them.
            from .train import train_adapter

            seed = self.train_config.seed + shard
            with self.registry.staging() as staged:
                stats = train_adapter(self.model_path, samples, self.train_config, seed, staged,
                                      progress, self.trained_device)
                # The loss-table row exists before the version is published: a server routing
                # meanwhile never finds a current version without its row.
                self._put_losses(Version(shard, weights_hash(staged), staged))
                version = self._store(shard, staged, samples, previous, previous_digest, seed,
                                      stats)
            steps, seconds = stats.steps, stats.seconds
        if not self.lineage.publish(shard, version, generation):
            # A sample tombstoned while it trained (the tombstone does not wait for the lock, and
            # a lost database connection drops the lock unawares) or another retrain's publish:
            # this version may hold forgotten data and is never served; garbage collection
            # deletes it now if it does.
            log.warning("shard %d: version %s lost the publish (generation %d moved on while it "
                        "trained); discarded, training again on the live samples", shard,
                        version, generation)
            self._collect_garbage(shard)
            return self._train_fenced(shard, progress)
        self._collect_garbage(shard)
        return ShardResult(shard, version, previous, previous_digest, len(samples),
                           id_set_hash(ids), steps, seconds)

    def _collect_garbage(self, shard: int) -> None:
        current = self._current_or_none(shard)
        self.registry.collect_garbage(shard, KEEP_VERSIONS, self.lineage.forgotten_ids(),
                                      current=current and current.id)

    def _store(self, shard: int, staged: Path, samples: list[Sample], previous: str | None,
               previous_digest: str | None, seed: int, stats) -> str:
        """Store the adapter staged for `shard`, with its provenance; returns its version."""
        ids = [s.id for s in samples]
        hashes = sorted(self.lineage.content_hash(s) for s in samples)
        return self.registry.store(shard, staged, {
            "sample_ids": ids,
            "sample_set_hash": id_set_hash(ids),
            # the version this one replaced when first published, and its digest (its folder is
            # deleted if it held a forgotten sample: a receipt after a crash reads it here)
            "previous": previous,
            "previous_digest": previous_digest,
            # keyed hashes of the samples trained on (a receipt's Merkle root is over these)
            "content_hashes": hashes,
            "data_hash": id_set_hash(hashes),
            "train_config": self.train_config.model_dump(mode="json"),
            "seed": seed,
            "device": self.trained_device,  # training is deterministic on one device only
            "base_model": self.info["base_model"],
            "versions": _package_versions(),
            "created_at": time.time(),
            "train_seconds": stats.seconds,
            "steps": stats.steps,
            "final_loss": stats.final_loss,
        }).id

    def forget_samples(self, ids: list[str], progress: ProgressFn = lambda shard: None,
                       release: list[str] = ()) -> list[ShardResult]:
        """Tombstone samples, retrain exactly the shards that held them, purge their text, then
        lift the quarantine holds of the forget requests `release` (they are exact now)."""
        affected = self.lineage.tombstone(ids)
        results = self.train(sorted(affected), progress)
        self.lineage.purge_text(ids)
        self.lineage.release_quarantine(release)
        return results

    def receipt(self, ids: list[str], results: list[ShardResult], *, request: str,
                owner: str | None, prompts: int, coalesced_with: list[str], worker: str,
                guard: tuple[str | None, str | None]) -> Receipt:
        """The unsigned receipt (base/receipts.py) of the forget request `request`, whose samples
        `ids` `forget_samples` made exact with `results`: per shard that held them, the version
        served before and after, their digests, the Merkle root of the keyed hashes the new
        version was trained on, and whether none of `ids` is among them; the base model's hash;
        whether their text is gone from every file of the lineage (False: a reader held up the
        purge's checkpoint, which `finish_purges` completes later); the digest of the router
        state the request leaves (`router_state`). The rest is the caller's:
        the owner (named by its keyed hash), how many other texts were guarded, the requests
        coalesced with it, the worker, the guard's version before and after."""
        by_shard = {r.shard: r for r in results}
        forgotten, shards = set(ids), []
        for shard in sorted(self.lineage.shards_of(ids)):
            result = by_shard[shard]
            # What serves now: a later retrain of the shard may have replaced ours; None:
            # retired, every sample of the shard is forgotten.
            current = self._current_or_none(shard)
            manifest = current.manifest if current else {"sample_ids": []}
            old, old_digest = result.previous, result.previous_digest
            if current is not None and old == current.id:
                # A retry after a crash that had published already: the version it replaced.
                old, old_digest = manifest.get("previous"), manifest.get("previous_digest")
            # what the verifier recomputes; a version stored before receipts: the lineage's
            trained_on = manifest.get("content_hashes") or self.lineage.content_hashes(
                manifest["sample_ids"]).values()
            folder = self.registry.shard_dir(shard).relative_to(self.root).as_posix()
            shards.append(ShardEvidence(
                shard=shard, folder=folder,
                old_version=old, old_digest=old_digest,
                new_version=current and current.id,
                new_digest=current and version_digest(current.path),
                samples=len(manifest["sample_ids"]), trained_on_root=merkle_root(trained_on),
                forgotten_ids_absent=not (forgotten & set(manifest["sample_ids"])),
                train_seconds=round(result.seconds, 2)))
        return Receipt(
            format=FORMAT, request=RequestEvidence(
                id=request, owner_hash=owner and self.lineage.owner_hash(owner),
                sample_hashes=sorted(self.lineage.content_hashes(ids).values()), prompts=prompts),
            shards=shards, base_model_sha256=self.info["base_model"].get("weights_sha256"),
            guard_before=guard[0], guard_after=guard[1],
            text_purged=not self.lineage.database.purge_pending(),
            coalesced_with=list(coalesced_with), worker=worker, completed_at=time.time(),
            router_digest=self._router_digest())

    def _router_digest(self) -> str | None:
        """The router state's digest; None for a store from before routing keys, whose
        partition centroids still hold every forgotten sample's share."""
        state = self.router_state()
        return None if state.keys is None else state.digest()

    # --- validation losses -------------------------------------------------------------------

    def refresh_losses(self) -> list[int]:
        """Compute the loss-table rows that are missing for the current versions and drop the
        rows of superseded ones; returns the shards whose row was computed."""
        if self.validation_embeddings is None:
            return []
        stale = [v for v in self.current_versions() if self.losses.row(v) is None]
        self._put_losses(*stale)
        self.losses.prune(self.current_versions())
        return [v.shard for v in stale]

    def _put_losses(self, *versions: Version) -> None:
        if self.validation_embeddings is None or not versions:
            return
        from .train import adapter_losses  # torch: see _train_fenced

        rows = adapter_losses(self.model_path, [v.path for v in versions],
                              read_samples(self.root / "validation.jsonl"),
                              self.train_config.max_length, self.trained_device)
        for version, row in zip(versions, rows):
            self.losses.put(version, row)

    # --- serving -----------------------------------------------------------------------------

    def current_versions(self) -> list[Version]:
        """The version each shard serves, by shard id (shards that serve nothing left out)."""
        return [self.registry.version(k, v) for k, v in self.lineage.current_versions().items()]

    def current(self, shard: int) -> Version:
        """The version `shard` serves; RegistryError if none."""
        version = self._current_or_none(shard)
        if version is None:
            raise RegistryError(f"shard {shard} has no published adapter")
        return version

    def _current_or_none(self, shard: int) -> Version | None:
        return next((v for v in self.current_versions() if v.shard == shard), None)

    def effective_route(self, config: RouteConfig, state: RouterState | None = None
                        ) -> RouteConfig:
        """`config`, except where the store lacks what its scheme reads: routing keys (a store
        from before them) fall back to `apa`, the loss table (a store trained without a
        validation set) to `semantic`. `state`: the router's (default: now)."""
        state = state or self.router_state()
        if needs_keys(config.scheme) and state.keys is None:
            config = config.model_copy(update={"scheme": "apa"})
        if needs_losses(config.scheme) and state.validation is None:
            config = config.model_copy(update={"scheme": "semantic"})
        return config

    def router_state(self, versions: list[Version] | None = None) -> RouterState:
        """What routing reads at `versions` (default: the current ones), read again from the
        lineage and the loss table when they change: a retrain publishes after its tombstones,
        so once a forget request completes nothing here comes from its samples."""
        versions = self.current_versions() if versions is None else versions
        served = tuple((v.shard, v.id) for v in versions)
        with self._router_lock:  # one read per change of versions, whatever the threads
            if self._router is None or self._router.versions != served:
                self._router = self._read_router(versions)
            return self._router

    def _read_router(self, versions: list[Version]) -> RouterState:
        shards = [v.shard for v in versions]
        live, count = self.lineage.live_keys(), len(self.lineage.shard_ids())
        keys = key_rows = None
        if live is None:  # a store from before routing keys: the partition's centroids
            centroids = self.lineage.centroids()
        else:  # from the live keys themselves, whether or not a purge has run yet
            _, key_shards, keys = live
            centroids = shard_centroids(key_shards, keys, count)
            row_of = np.full(count, -1)
            row_of[shards] = np.arange(len(shards))
            key_rows = row_of[key_shards]  # (N,) row of each key's shard; -1: not served
            keys, key_rows = keys[key_rows >= 0], key_rows[key_rows >= 0]
        return RouterState(
            versions=tuple((v.shard, v.id) for v in versions), centroids=centroids[shards],
            keys=keys, key_rows=key_rows, validation=self.validation_embeddings,
            losses=None if self.validation_embeddings is None or not versions
            else self.losses.matrix(versions))

    def weights(self, query: np.ndarray, config: RouteConfig, excluded: set[int] = frozenset(),
                avoid_held: bool = True, spared: Collection[str] = ()) -> dict[int, float]:
        """Shard id -> weight for a request with embedding `query` (d,); {} when no shard
        serves (every sample forgotten): the base model alone answers. `avoid_held`: shards
        that a pending forget request holds (quarantine) get weight 0 too, unless only the
        requests `spared` hold them (forget.quarantine: matched)."""
        versions = self.current_versions()
        if not versions:
            return {}
        state = self.router_state(versions)
        config = self.effective_route(config, state)
        shards = [v.shard for v in versions]
        inputs = RouteInputs(query=query, centroids=state.centroids, validation=state.validation,
                             losses=state.losses, keys=state.keys, key_rows=state.key_rows)
        # Read for every request, used or not: whether a request touches the lineage never
        # depends on `avoid_held` (a flagged prompt's), so an unreachable database fails every
        # request alike and tells no client which were flagged.
        holds = self.lineage.quarantine_holds()
        held = {k for request, shards_held in holds.items()
                if avoid_held and request not in spared for k in shards_held}
        return route(inputs, config, shards, set(excluded) | held)

    def resolve(self, query: np.ndarray, config: RouteConfig, avoid_held: bool = True,
                spared: Collection[str] = (), stacked: bool = False) -> Mixture | None:
        """The mixture adapter for a request with embedding `query` (d,), pinned until
        `release`: an engine reads its files when it schedules the request. None: no shard has
        weight (the base model serves). `avoid_held`, `spared`: as in `weights`. `stacked`:
        the stack of the current versions with the request's weights as scales (`stack`), else
        the weighted mixture materialised (`mixture`)."""
        try:
            return self._resolve(query, config, avoid_held, spared, stacked)
        except (RegistryError, LossTableError, FileNotFoundError):
            # A worker published a retrain between reading the versions and the files (the
            # old version, its loss row or a retired shard is gone): route again on the new.
            return self._resolve(query, config, avoid_held, spared, stacked)

    def _resolve(self, query: np.ndarray, config: RouteConfig, avoid_held: bool,
                 spared: Collection[str], stacked: bool) -> Mixture | None:
        weights = self.weights(query, config, avoid_held=avoid_held, spared=spared)
        if not weights:
            return None
        with self._mixture_lock:
            mixture = self.stack(weights) if stacked else self.mixture(weights)
            self.mixtures.pin(mixture.name)
        return mixture

    def release(self, name: str) -> None:
        """A request that `resolve` gave the mixture `name` is done with it."""
        self.mixtures.unpin(name)

    def sweep_mixtures(self) -> list[str]:
        """Delete the cached mixtures of superseded versions (except those pinned by requests
        in flight in this process). New requests never use them: their names hash the versions.
        Run by the process that serves (the server syncs every few seconds), so that a retrain
        in another process never deletes a mixture an engine is about to read. The router state
        is read again too, so an idle server keeps nothing of a forgotten sample either."""
        versions = self.current_versions()
        self.router_state(versions)
        with self._mixture_lock:
            return self.mixtures.sweep({v.shard: v.id for v in versions})

    def stack(self, weights: dict[int, float]) -> Mixture:
        """Every current shard adapter stacked (mixture.py; built once per set of versions),
        with the scales that make it the mixture of `weights` (shard id -> weight; a shard
        without one, e.g. quarantined, gets 0)."""
        versions = self._serving(weights)
        stack = self.mixtures.get([(v, 1.0) for v in versions])
        scales = tuple(weights.get(v.shard, 0.0) for v in versions for _ in range(self._rank(v)))
        return dataclasses.replace(stack, scales=scales)

    def stack_rank(self) -> int:
        """The rank of the current shard adapters stacked: sum of r_k (K x r)."""
        return sum(self._rank(v) for v in self.current_versions())

    def _rank(self, version: Version) -> int:
        if version.id not in self._ranks:  # versions never change: read once
            self._ranks[version.id] = json.loads((version.path / CONFIG).read_text())["r"]
        return self._ranks[version.id]

    def mixture(self, weights: dict[int, float]) -> Mixture | None:
        """The cached mixture adapter for these weights; None for no weights (the base model)."""
        if not weights:
            return None
        versions = {v.shard: v for v in self._serving(weights)}
        return self.mixtures.get([(versions[k], w) for k, w in sorted(weights.items())])

    def _serving(self, weights: dict[int, float]) -> list[Version]:
        """The current versions; RegistryError if a shard that `weights` names serves nothing
        any more (retired since the weights were read: `resolve` routes again)."""
        versions = self.current_versions()
        if set(weights) - {v.shard for v in versions}:
            raise RegistryError("a weighted shard is no longer published")
        return versions


def shard_centroids(shards: np.ndarray, keys: np.ndarray, count: int) -> np.ndarray:
    """(count, d) float32: per shard, the unit mean of its rows of `keys`, summed in their
    order (one function for every writer, so equal live keys give equal bytes); zero for a
    shard with none."""
    out = np.zeros((count, keys.shape[1]), dtype=np.float32)
    for k in range(count):
        mean = keys[shards == k].astype(np.float64).sum(axis=0)
        norm = np.linalg.norm(mean)
        out[k] = mean / norm if norm > 0 else 0.0
    return out


@dataclass(frozen=True)
class RouterState:
    """Everything routing reads, for one set of served versions: a function of the live samples
    (their keys, the shards' centroids from them) and of the versions (their loss-table rows);
    the validation set is consented data that no forget request names. `digest` is what a
    receipt records and an auditor compares with a store trained without the forgotten data."""

    versions: tuple[tuple[int, str], ...]  # (shard, version id) served, by shard id
    centroids: np.ndarray  # (K, d) float32, row i: the i-th served shard's
    keys: np.ndarray | None  # (N, d) float32 the served shards' live keys; None: an old store
    key_rows: np.ndarray | None  # (N,) the row (served shard) of each key
    validation: np.ndarray | None  # (V, d)
    losses: np.ndarray | None  # (K, V) rows of `versions`, in their order

    def digest(self) -> str:
        """sha256 over the versions and each array's dtype, shape and bytes."""
        h = hashlib.sha256(json.dumps(self.versions).encode())
        for array in (self.centroids, self.keys, self.key_rows, self.validation, self.losses):
            frame = None if array is None else [array.dtype.str, list(array.shape)]
            h.update(json.dumps(frame).encode())
            if array is not None:
                h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()


def _package_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("torch", "transformers", "peft")}
