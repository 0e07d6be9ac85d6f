"""The forget-request queue: durable, leased, behind a small interface.

A request moves through `received -> guarded -> retraining -> completed`, or to `failed` (with
the reason) and back to `retraining` on its next attempt: a forget request is a legal obligation
that does not expire, so failures are retried for as long as it takes, after a wait that doubles
per attempt up to a cap. It is durable before the API answers
202: `SQLiteQueue` commits in WAL mode with `synchronous=FULL` (NORMAL can lose a committed
transaction on power loss). Workers take requests under a lease that they extend with
heartbeats; a dead worker's lease runs out and its requests are taken again.

`ForgetQueue` is the interface the server, the worker and the CLI use, so that a Postgres queue
(`SELECT ... FOR UPDATE SKIP LOCKED`) can replace SQLite for several server replicas;
`open_queue` picks the implementation from config.

Raw text (the request's own `prompts`) is kept only until the request completes: then it is
zeroed in its page (secure_delete) and the WAL is truncated. A request's dedup key is an HMAC
under `secret.key` beside the database, so it does not give the prompts back to a guesser.
Schema changes are forward migrations counted in SQLite's `user_version`.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from abc import ABC, abstractmethod
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from adapters import (Synchronous, keyed_hash, load_secret, sqlite_checkpoint, sqlite_connect,
                      sqlite_transaction)

from ..errors import LetheError

State = Literal["received", "guarded", "retraining", "completed", "failed"]
STATES: tuple[State, ...] = ("received", "guarded", "retraining", "completed", "failed")
ACTIVE: tuple[State, ...] = ("received", "guarded", "retraining", "failed")  # not yet exact


class QueueError(LetheError):
    """The queue store cannot be read or written."""


class UnknownRequestError(LetheError, LookupError):
    http_status = 404
    code = "not_found"

    def __init__(self, request_id: str):
        self.request_id = request_id
        super().__init__(f"no forget request with id {request_id!r}")


@dataclass
class ForgetRequest:
    id: str
    owner: str | None
    sample_ids: list[str]
    state: State
    prompts: list[str] | None  # content to guard beyond the samples; None once purged
    attempts: int = 0
    reason: str | None = None  # why the last attempt failed
    times: dict[str, float] = field(default_factory=dict)  # state -> when it was first entered
    receipt: dict | None = None
    retry_at: float | None = None  # failed: when the next attempt is due

    def public(self) -> dict:
        """What the API and `lethe queue --json` show: ids and states, never text."""
        return {"id": self.id, "state": self.state, "owner": self.owner,
                "samples": len(self.sample_ids), "attempts": self.attempts,
                "reason": self.reason, "retry_at": self.retry_at, "times": self.times}


def backoff(attempts: int, first: float, cap: float) -> float:
    """Seconds to wait after the `attempts`-th failure: first, 2 x first, 4 x first, ... <= cap."""
    return min(first * 2 ** max(attempts - 1, 0), cap)


class ForgetQueue(ABC):
    """What the server, the worker and the CLI need of a forget-request store."""

    @abstractmethod
    def submit(self, owner: str | None, sample_ids: list[str], prompts: list[str]
               ) -> tuple[ForgetRequest, bool]:
        """Store a request durably; (request, created). A request for the same sample ids and
        prompts as an existing one returns that one, created False (idempotent)."""

    @abstractmethod
    def get(self, request_id: str) -> ForgetRequest:
        """Raises UnknownRequestError."""

    @abstractmethod
    def list(self, states: tuple[State, ...] = STATES) -> list[ForgetRequest]:
        """Requests in these states, oldest first."""

    @abstractmethod
    def mark_guarded(self, request_id: str) -> None:
        """received -> guarded (the guard has its exemplars); later states are left alone."""

    @abstractmethod
    def counts(self) -> dict[State, int]:
        """How many requests are in each state."""

    @abstractmethod
    def lease(self, worker: str, seconds: float) -> list[ForgetRequest]:
        """Take every request that is waiting (received, guarded), whose lease ran out, or that
        failed and whose retry is due; they become `retraining` under `worker`'s lease for
        `seconds`."""

    @abstractmethod
    def heartbeat(self, worker: str, request_ids: list[str], seconds: float) -> None:
        """Extend `worker`'s lease on these requests."""

    @abstractmethod
    def complete(self, worker: str, receipts: dict[str, dict]) -> None:
        """retraining -> completed with a receipt each; their prompts are purged."""

    @abstractmethod
    def fail(self, worker: str, request_ids: list[str], reason: str, retry_after: float,
             retry_max: float) -> None:
        """retraining -> failed with the reason; a later lease retries it after
        `backoff(attempts, retry_after, retry_max)` seconds."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,    -- request_key: duplicates find the existing row
    owner TEXT,
    sample_ids TEXT NOT NULL,    -- JSON list
    prompts TEXT,                -- JSON list; NULL once completed
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    times TEXT NOT NULL,         -- JSON: state -> first time entered
    lease_owner TEXT,
    lease_until REAL,
    failed_at REAL,
    receipt TEXT,
    seq INTEGER NOT NULL         -- submission order
);
CREATE INDEX IF NOT EXISTS requests_state ON requests(state);
"""
# Forward migrations: the database's user_version is how many of these it has had.
_MIGRATIONS = (
    "ALTER TABLE requests ADD COLUMN retry_at REAL",  # 1: capped exponential backoff
)


class SQLiteQueue(ForgetQueue):
    def __init__(self, path: Path, synchronous: Synchronous = "FULL"):
        self.path = Path(path)
        self.synchronous = synchronous
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._secret = load_secret(self.path.parent / "secret.key")
        with closing(self._connect()) as db:
            db.executescript(_SCHEMA)  # idempotent: CREATE ... IF NOT EXISTS
        with self._transaction() as db:  # one process migrates; the others then find it done
            (version,) = db.execute("PRAGMA user_version").fetchone()
            for statement in _MIGRATIONS[version:]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {len(_MIGRATIONS)}")

    def _connect(self) -> sqlite3.Connection:
        # A connection per call (server, worker and CLI share the file): adapters/sqlite.py.
        try:
            return sqlite_connect(self.path, self.synchronous)
        except sqlite3.Error as e:
            raise QueueError(f"cannot open the forget queue {self.path}: {e}") from e

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            with sqlite_transaction(self.path, self.synchronous) as db:
                yield db
        except sqlite3.Error as e:
            raise QueueError(f"forget queue {self.path}: {e}") from e

    def _rows(self, db, where: str, params=()) -> list[ForgetRequest]:
        rows = db.execute(
            "SELECT id, owner, sample_ids, state, prompts, attempts, reason, times, receipt, "
            f"retry_at FROM requests WHERE {where} ORDER BY seq", tuple(params)).fetchall()
        return [ForgetRequest(id=r[0], owner=r[1], sample_ids=json.loads(r[2]), state=r[3],
                              prompts=None if r[4] is None else json.loads(r[4]), attempts=r[5],
                              reason=r[6], times=json.loads(r[7]),
                              receipt=None if r[8] is None else json.loads(r[8]), retry_at=r[9])
                for r in rows]

    @staticmethod
    def _enter(db, request_id: str, state: State, now: float, extra: str = "",
               params: tuple = ()) -> dict[str, float]:
        """Move a request to `state`, recording when it first entered it; returns its times."""
        (times,) = db.execute("SELECT times FROM requests WHERE id = ?", (request_id,)).fetchone()
        times = json.loads(times)
        times.setdefault(state, now)
        db.execute(f"UPDATE requests SET state = ?, times = ?{extra} WHERE id = ?",
                   (state, json.dumps(times), *params, request_id))
        return times

    def _owned(self, db, worker: str, request_ids: list[str]) -> list[str]:
        """Those of the requests still under `worker`'s lease."""
        return [r.id for r in self._rows(
            db, f"state = 'retraining' AND lease_owner = ? AND id IN "
                f"({','.join('?' * len(request_ids))})", (worker, *request_ids))]

    def submit(self, owner, sample_ids, prompts):
        # Identity of a request's content: the same ids and prompts are the same request.
        key = keyed_hash(self._secret, json.dumps([sorted(set(sample_ids)), sorted(set(prompts))]))
        with self._transaction() as db:
            existing = self._rows(db, "key = ?", (key,))
            if existing:
                if existing[0].state == "failed":  # asked again: retry it now
                    db.execute("UPDATE requests SET retry_at = ? WHERE id = ?",
                               (time.time(), existing[0].id))
                    existing = self._rows(db, "key = ?", (key,))
                return existing[0], False
            (seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM requests").fetchone()
            request = ForgetRequest(id="fgt-" + uuid.uuid4().hex[:24], owner=owner,
                                    sample_ids=sorted(set(sample_ids)), state="received",
                                    prompts=list(prompts), times={"received": time.time()})
            db.execute(
                "INSERT INTO requests (id, key, owner, sample_ids, prompts, state, times, seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (request.id, key, owner, json.dumps(request.sample_ids),
                 json.dumps(request.prompts), request.state, json.dumps(request.times), seq))
        return request, True

    def get(self, request_id):
        with closing(self._connect()) as db:
            rows = self._rows(db, "id = ?", (request_id,))
        if not rows:
            raise UnknownRequestError(request_id)
        return rows[0]

    def list(self, states=STATES):
        with closing(self._connect()) as db:
            return self._rows(db, f"state IN ({','.join('?' * len(states))})", states)

    def counts(self):
        with closing(self._connect()) as db:
            rows = dict(db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state"))
        return {state: rows.get(state, 0) for state in STATES}

    def mark_guarded(self, request_id):
        with self._transaction() as db:
            if self._rows(db, "id = ? AND state = 'received'", (request_id,)):
                self._enter(db, request_id, "guarded", time.time())

    def lease(self, worker, seconds):
        now = time.time()
        with self._transaction() as db:
            taken = self._rows(
                db, "state IN ('received', 'guarded') "
                    "OR (state = 'retraining' AND lease_until < ?) "
                    "OR (state = 'failed' AND retry_at <= ?)", (now, now))
            for request in taken:
                self._enter(db, request.id, "retraining", now,
                            ", lease_owner = ?, lease_until = ?, attempts = attempts + 1",
                            (worker, now + seconds))
            ids = [r.id for r in taken]
            return self._rows(db, f"id IN ({','.join('?' * len(ids))})", ids) if ids else []

    def heartbeat(self, worker, request_ids, seconds):
        with self._transaction() as db:
            db.executemany("UPDATE requests SET lease_until = ? WHERE id = ? AND lease_owner = ? "
                           "AND state = 'retraining'",
                           [(time.time() + seconds, rid, worker) for rid in request_ids])

    def complete(self, worker, receipts):
        now = time.time()
        with self._transaction() as db:
            for rid in self._owned(db, worker, list(receipts)):
                times = self._enter(db, rid, "completed", now,
                                    ", prompts = NULL, reason = NULL, lease_owner = NULL, "
                                    "retry_at = NULL")
                db.execute("UPDATE requests SET receipt = ? WHERE id = ?",
                           (json.dumps({**receipts[rid], "times": times}), rid))
        try:  # the purged prompts leave no copy in the WAL
            sqlite_checkpoint(self.path, self.synchronous)
        except sqlite3.Error as e:
            raise QueueError(f"forget queue {self.path}: {e}") from e

    def fail(self, worker, request_ids, reason, retry_after, retry_max):
        now = time.time()
        with self._transaction() as db:
            for rid in self._owned(db, worker, request_ids):
                (attempts,) = db.execute("SELECT attempts FROM requests WHERE id = ?",
                                         (rid,)).fetchone()
                self._enter(db, rid, "failed", now,
                            ", reason = ?, failed_at = ?, retry_at = ?, lease_owner = NULL, "
                            "lease_until = NULL",
                            (reason, now, now + backoff(attempts, retry_after, retry_max)))


def open_queue(path: Path, synchronous: Synchronous) -> ForgetQueue:
    """The forget queue at `path` (config: `Config.queue_path`, `forget.synchronous`)."""
    return SQLiteQueue(path, synchronous)
