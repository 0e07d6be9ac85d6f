"""Lineage: which shard holds each training sample, and which samples were forgotten.

A database (base/database.py: a SQLite file by default, WAL and synchronous=FULL, so a committed
tombstone survives power loss; or PostgreSQL, shared by replicas and workers). The raw text of
a sample is kept only until its data is forgotten and its shard retrained (`purge_text`); the id,
owner, shard and a content hash stay, so a receipt can show what was removed. The hash is keyed
(HMAC under `secret.key` beside the database, secret.py): it proves a text's identity to whoever
holds the key and reveals nothing to a reader of the database alone. The text itself is sealed
under a data key per sample (base/keyring.py), which the purge shreds: whatever copy of a purged
sample's ciphertext the database's files keep can no longer be read.

Each shard row also holds the version it serves (the pointer `CURRENT`, NULL: none) and a
generation, the fence of publication: a tombstone and a publish each advance it, and a publish
is a compare-and-set, "make this version current if the generation is still g, and set it to
g+1". A retrain reads g before the shard's live samples, so a sample tombstoned after that read
(or a version another retrain published meanwhile) makes its publish lose, however long it
took and whether or not it still held its lock.

Each sample also keeps its routing key (the unit embedding of its prompt, sealed with its text
and purged with it): what the `nearest` weighting scheme attends over. A shard's centroid is the
mean of its live samples' keys, computed when read (`live_keys`; store.py's RouterState) and never
stored: a stored mean, rewritten at each purge, would leave its old values in the database's
files, and the old mean less the live keys is the forgotten key. So nothing routing reads is a
function of a forgotten sample. (A lineage from before routing keys keeps its partition's
centroids, forgotten samples included: `centroids`.)

Quarantine is a set of holds, one per (forget request, shard): a shard is quarantined while any
request holds it, and each request releases only its own holds, so lifting one request's
quarantine can never lift another's.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from base import Connection, Database, KeyRing, load_secret, owner_hash, sample_hash

from .errors import AdapterError
from .samples import Sample

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    shard INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    prompt TEXT,               -- sealed (base's KeyRing: ring `samples`, name = id); NULL once purged
    response TEXT,
    forgotten_at {real}        -- NULL while live: the tombstone
);
CREATE INDEX IF NOT EXISTS samples_owner ON samples(owner);
CREATE INDEX IF NOT EXISTS samples_shard ON samples(shard);
CREATE TABLE IF NOT EXISTS shards (
    shard INTEGER PRIMARY KEY,
    centroid {bytes} NOT NULL  -- float32: the partition's centroid (zeros since routing keys)
);
CREATE TABLE IF NOT EXISTS quarantine (
    request TEXT NOT NULL,     -- the forget request that holds the shard at weight 0
    shard INTEGER NOT NULL,
    PRIMARY KEY (request, shard)
)
"""
_MIGRATIONS: tuple[str, ...] = (  # forward schema changes, appended in order (base/database.py)
    "ALTER TABLE shards ADD COLUMN generation INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE shards ADD COLUMN version TEXT",  # the version served; NULL: none
    # sealed base64 of the float32 unit embedding of the prompt (text #2 of the sample's key);
    # NULL once purged, and in a lineage from before routing keys
    "ALTER TABLE samples ADD COLUMN route_key TEXT",
)


class LineageError(AdapterError, ValueError):
    """Bad use of the lineage store (already partitioned, not partitioned yet)."""


class UnknownSampleError(AdapterError, LookupError):
    """Sample ids or an owner the lineage does not know; `missing` lists them."""

    def __init__(self, missing: list[str], what: str = "sample id"):
        self.missing = missing
        super().__init__(f"unknown {what}(s): {', '.join(missing)}")


def _key_text(key: np.ndarray) -> str:
    return base64.b64encode(np.asarray(key, dtype=np.float32).tobytes()).decode()


def _key_array(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.float32)


def id_set_hash(ids: Iterable[str]) -> str:
    """Hash of a set of sample ids: equal sets, equal hashes (order does not matter)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


class Lineage:
    def __init__(self, database: Database, secret_file: Path):
        """`secret_file`: the key of the content hashes (created if missing); every process
        that shares the database must share it (it lives beside the adapters)."""
        self.database = database
        self._secret = load_secret(Path(secret_file))
        database.migrate("lineage", _SCHEMA, _MIGRATIONS)
        self.keys = KeyRing(database, Path(secret_file).parent / "keys", "samples")
        self.keys.seal_unsealed("samples", ("prompt", "response"))  # an older lineage's

    def content_hash(self, sample: Sample) -> str:
        """Keyed hash of a sample's content: kept after its text is purged."""
        return sample_hash(self._secret, dataclasses.asdict(sample))

    def owner_hash(self, owner: str) -> str:
        """Keyed hash of an owner's name: what a receipt names instead of it."""
        return owner_hash(self._secret, owner)

    def content_hashes(self, ids: Iterable[str]) -> dict[str, str]:
        """Sample id -> its content hash, forgotten samples included (the hash outlives the
        text). Raises UnknownSampleError naming ids it lacks."""
        ids, found = sorted(set(ids)), {}
        for start in range(0, len(ids), 500):  # SQLite allows 32,766 parameters a query
            chunk = ids[start:start + 500]
            found.update(self._query(f"SELECT id, content_hash FROM samples WHERE id IN "
                                     f"({','.join('?' * len(chunk))})", chunk))
        missing = [i for i in ids if i not in found]
        if missing:
            raise UnknownSampleError(missing)
        return found

    def _query(self, sql: str, params: Iterable = ()) -> list[tuple]:
        with self.database.read() as db:
            return db.execute(sql, tuple(params)).fetchall()

    # --- partition ---------------------------------------------------------------------------

    def assign(self, samples: list[Sample], shards: np.ndarray, keys: np.ndarray,
               count: int) -> None:
        """Record the partition: samples[i] goes to shard shards[i] of `count`, with routing key
        keys[i] ((N, d) unit embeddings of the prompts)."""
        if self.shard_ids():
            raise LineageError(f"{self.database.url} already holds a partition; use a new data "
                               "directory")
        keys = np.asarray(keys, dtype=np.float32)
        with self.database.write() as db:
            sealed = self.keys.seal(db, [(s.id, (s.prompt, s.response, _key_text(key)))
                                         for s, key in zip(samples, keys)])
            db.executemany(
                "INSERT INTO samples (id, owner, shard, content_hash, prompt, response, "
                "route_key) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(s.id, s.owner, int(k), self.content_hash(s), *texts)
                 for s, k, texts in zip(samples, shards, sealed)],
            )
            zero = np.zeros(keys.shape[1], dtype=np.float32).tobytes()  # its length: d
            db.executemany("INSERT INTO shards (shard, centroid) VALUES (?, ?)",
                           [(k, zero) for k in range(count)])

    def shard_ids(self) -> list[int]:
        return [k for (k,) in self._query("SELECT shard FROM shards ORDER BY shard")]

    def centroids(self) -> np.ndarray:
        """(K, d) float32, row k for shard k, as stored: the partition's centroids in a lineage
        from before routing keys, zeros since (the centroids are the live keys' means:
        store.py's RouterState)."""
        rows = self._query("SELECT centroid FROM shards ORDER BY shard")
        return np.stack([np.frombuffer(blob, dtype=np.float32) for (blob,) in rows])

    def live_keys(self, db: Connection | None = None
                  ) -> tuple[list[str], np.ndarray, np.ndarray] | None:
        """(ids of the live samples, (N,) their shards, (N, d) float32 their routing keys),
        sorted by shard then id (in Python: a database's collation may order ids otherwise);
        None for a lineage from before routing keys."""
        if db is None:
            with self.database.read() as db:
                return self.live_keys(db)
        rows = db.execute("SELECT id, shard, route_key FROM samples "
                          "WHERE forgotten_at IS NULL").fetchall()
        if any(key is None for _, _, key in rows):
            return None
        # shredded="none": a sample tombstoned and purged since the rows were read has no key
        # left, and is not live any more
        opened = self.keys.open([(i, (None, None, key)) for i, _, key in rows], db,
                                shredded="none")
        live = sorted((k, i, texts[2]) for (i, k, _), texts in zip(rows, opened) if texts)
        if not live:  # every sample forgotten
            [(centroid,)] = db.execute("SELECT centroid FROM shards LIMIT 1").fetchall()
            return [], np.zeros(0, dtype=np.int64), np.zeros((0, len(centroid) // 4), np.float32)
        return ([i for _, i, _ in live], np.array([k for k, _, _ in live], dtype=np.int64),
                np.stack([_key_array(key) for _, _, key in live]))

    def shard_samples(self, shard: int) -> list[Sample]:
        """The live samples of a shard, sorted by id: the training set of its next adapter."""
        rows = self._query("SELECT id, owner, prompt, response FROM samples "
                           "WHERE shard = ? AND forgotten_at IS NULL ORDER BY id", (shard,))
        texts = self.keys.open([(i, (p, r)) for i, _, p, r in rows])
        return [Sample(i, owner, *text) for (i, owner, _, _), text in zip(rows, texts)]

    def shard_table(self) -> list[dict]:
        """Per shard: live and forgotten sample counts and quarantine state."""
        rows = self._query(
            "SELECT s.shard, SUM(CASE WHEN x.forgotten_at IS NULL THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN x.forgotten_at IS NULL THEN 0 ELSE 1 END), "
            "EXISTS (SELECT 1 FROM quarantine q WHERE q.shard = s.shard) "
            "FROM shards s JOIN samples x ON x.shard = s.shard GROUP BY s.shard ORDER BY s.shard")
        return [{"shard": k, "samples": live, "forgotten": gone, "quarantined": bool(q)}
                for k, live, gone, q in rows]

    # --- forgetting --------------------------------------------------------------------------

    def owner_sample_ids(self, owner: str) -> list[str]:
        ids = [i for (i,) in self._query("SELECT id FROM samples WHERE owner = ? ORDER BY id",
                                         (owner,))]
        if not ids:
            raise UnknownSampleError([owner], what="owner")
        return ids

    def shards_of(self, ids: Iterable[str]) -> dict[int, list[str]]:
        """Shard -> the given ids it holds. Raises UnknownSampleError naming ids it lacks."""
        ids = sorted(set(ids))
        with self.database.read() as db:
            found = dict(db.execute(
                f"SELECT id, shard FROM samples WHERE id IN ({','.join('?' * len(ids))})", ids
            ).fetchall()) if ids else {}
        missing = [i for i in ids if i not in found]
        if missing:
            raise UnknownSampleError(missing)
        by_shard: dict[int, list[str]] = {}
        for i in ids:
            by_shard.setdefault(found[i], []).append(i)
        return by_shard

    def tombstone(self, ids: Iterable[str]) -> dict[int, list[str]]:
        """Mark samples forgotten (idempotent), advancing the generation of each shard where one
        was live: a retrain that read it live can no longer publish. Returns shard -> ids, as
        `shards_of`."""
        by_shard = self.shards_of(ids)
        with self.database.write() as db:
            for shard, shard_ids in by_shard.items():
                if db.executemany("UPDATE samples SET forgotten_at = ? "
                                  "WHERE id = ? AND forgotten_at IS NULL",
                                  [(time.time(), i) for i in shard_ids]):
                    db.execute("UPDATE shards SET generation = generation + 1 WHERE shard = ?",
                               (shard,))
        return by_shard

    def sample_texts(self, ids: Iterable[str]) -> list[str]:
        """The prompts and responses of these samples that are not purged yet."""
        ids = sorted(set(ids))
        rows = self._query(f"SELECT id, prompt, response FROM samples WHERE prompt IS NOT NULL "
                           f"AND id IN ({','.join('?' * len(ids))})", ids) if ids else []
        # shredded="none": a purge that committed since the rows were read leaves no text.
        return [text for texts in self.keys.open([(i, (p, r)) for i, p, r in rows],
                                                 shredded="none") if texts for text in texts]

    def forgotten_ids(self) -> set[str]:
        return {i for (i,) in self._query("SELECT id FROM samples WHERE forgotten_at IS NOT NULL")}

    def purge_text(self, ids: Iterable[str]) -> int:
        """Drop the sealed text of forgotten samples and shred their keys, then end the key
        ring's epoch: no copy of the text left in any file of the database (a dead row version,
        a WAL segment, a page not yet overwritten, a backup) can be read any more. SQLite also
        zeroes it in its page (secure_delete) and checkpoints the WAL. Ids and keyed content
        hashes remain."""
        ids = sorted(set(ids))
        with self.database.write() as db:
            gone = [i for (i,) in db.execute(
                f"SELECT id FROM samples WHERE forgotten_at IS NOT NULL AND "
                f"id IN ({','.join('?' * len(ids))})", ids).fetchall()] if ids else []
            purged = db.executemany(
                "UPDATE samples SET prompt = NULL, response = NULL, route_key = NULL "
                "WHERE id = ? AND prompt IS NOT NULL", [(i,) for i in gone])
            self.keys.forget(db, gone)
        self.keys.rotate()  # also after a retry that found the text purged: a crash may have
        # come between the commit above and the end of the epoch
        self.database.purged("samples")
        return purged

    # --- publication --------------------------------------------------------------------------

    def generation(self, shard: int) -> int:
        """The shard's generation: read it before its live samples (`shard_samples`), and pass
        it to `publish`."""
        [(generation,)] = self._query("SELECT generation FROM shards WHERE shard = ?", (shard,))
        return generation

    def current_versions(self) -> dict[int, str]:
        """Shard id -> the version it serves, for every shard that serves one."""
        return dict(self._query("SELECT shard, version FROM shards WHERE version IS NOT NULL "
                                "ORDER BY shard"))

    def publish(self, shard: int, version: str | None, generation: int) -> bool:
        """Make `version` (None: nothing) what `shard` serves if its generation is still
        `generation`, and advance it; whether it did (False: a tombstone or another publish came
        first, and this version must not be served)."""
        with self.database.write() as db:
            return db.execute("UPDATE shards SET version = ?, generation = generation + 1 "
                              "WHERE shard = ? AND generation = ?",
                              (version, shard, generation)).rowcount == 1

    # --- quarantine --------------------------------------------------------------------------

    def hold_quarantine(self, request: str, shards: Iterable[int]) -> None:
        """`request` holds these shards at weight 0 (idempotent)."""
        with self.database.write() as db:
            db.executemany("INSERT INTO quarantine (request, shard) VALUES (?, ?) "
                           "ON CONFLICT DO NOTHING",
                           [(request, int(k)) for k in shards])

    def release_quarantine(self, requests: Iterable[str]) -> None:
        """Drop every hold of these requests; shards that no other request holds serve again."""
        with self.database.write() as db:
            db.executemany("DELETE FROM quarantine WHERE request = ?", [(r,) for r in requests])

    def quarantine_holds(self) -> dict[str, set[int]]:
        """Request -> the shards it holds."""
        holds: dict[str, set[int]] = {}
        for request, shard in self._query("SELECT request, shard FROM quarantine"):
            holds.setdefault(request, set()).add(shard)
        return holds
