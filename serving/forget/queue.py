"""The forget-request queue: durable, leased, behind a small interface.

A request moves through `received -> guarded -> retraining -> completed`, or to `failed` (with
the reason) and back to `retraining` on its next attempt. It is durable before the API answers
202: `SQLiteQueue` commits in WAL mode with `synchronous=FULL` (NORMAL can lose a committed
transaction on power loss). Workers take requests under a lease that they extend with
heartbeats; a dead worker's lease runs out and its requests are taken again.

`ForgetQueue` is the interface the server, the worker and the CLI use, so that a Postgres queue
(`SELECT ... FOR UPDATE SKIP LOCKED`) can replace SQLite for several server replicas;
`open_queue` picks the implementation from config.

Raw text (the request's own `prompts`) is kept only until the request completes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from abc import ABC, abstractmethod
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from adapters import Synchronous, sqlite_connect, sqlite_transaction

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

    def public(self) -> dict:
        """What the API and `lethe queue --json` show: ids and states, never text."""
        return {"id": self.id, "state": self.state, "owner": self.owner,
                "samples": len(self.sample_ids), "attempts": self.attempts,
                "reason": self.reason, "times": self.times}


def request_key(sample_ids: list[str], prompts: list[str]) -> str:
    """Identity of a request's content: the same ids and prompts are the same request."""
    text = json.dumps([sorted(set(sample_ids)), sorted(set(prompts))])
    return hashlib.sha256(text.encode()).hexdigest()


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
    def lease(self, worker: str, seconds: float, max_attempts: int, retry_after: float
              ) -> list[ForgetRequest]:
        """Take every request that is waiting (received, guarded), whose lease ran out, or that
        failed at least `retry_after` seconds ago with attempts left; they become `retraining`
        under `worker`'s lease for `seconds`."""

    @abstractmethod
    def heartbeat(self, worker: str, request_ids: list[str], seconds: float) -> None:
        """Extend `worker`'s lease on these requests."""

    @abstractmethod
    def complete(self, worker: str, receipts: dict[str, dict]) -> None:
        """retraining -> completed with a receipt each; their prompts are purged."""

    @abstractmethod
    def fail(self, worker: str, request_ids: list[str], reason: str) -> None:
        """retraining -> failed with the reason; retried by a later lease."""


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


class SQLiteQueue(ForgetQueue):
    def __init__(self, path: Path, synchronous: Synchronous = "FULL"):
        self.path = Path(path)
        self.synchronous = synchronous
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.executescript(_SCHEMA)

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
            "SELECT id, owner, sample_ids, state, prompts, attempts, reason, times, receipt "
            f"FROM requests WHERE {where} ORDER BY seq", tuple(params)).fetchall()
        return [ForgetRequest(id=r[0], owner=r[1], sample_ids=json.loads(r[2]), state=r[3],
                              prompts=None if r[4] is None else json.loads(r[4]), attempts=r[5],
                              reason=r[6], times=json.loads(r[7]),
                              receipt=None if r[8] is None else json.loads(r[8]))
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
        key = request_key(sample_ids, prompts)
        with self._transaction() as db:
            existing = self._rows(db, "key = ?", (key,))
            if existing:
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

    def mark_guarded(self, request_id):
        with self._transaction() as db:
            if self._rows(db, "id = ? AND state = 'received'", (request_id,)):
                self._enter(db, request_id, "guarded", time.time())

    def lease(self, worker, seconds, max_attempts, retry_after):
        now = time.time()
        with self._transaction() as db:
            taken = self._rows(
                db, "state IN ('received', 'guarded') "
                    "OR (state = 'retraining' AND lease_until < ?) "
                    "OR (state = 'failed' AND attempts < ? AND failed_at <= ?)",
                (now, max_attempts, now - retry_after))
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
                                    ", prompts = NULL, reason = NULL, lease_owner = NULL")
                db.execute("UPDATE requests SET receipt = ? WHERE id = ?",
                           (json.dumps({**receipts[rid], "times": times}), rid))

    def fail(self, worker, request_ids, reason):
        now = time.time()
        with self._transaction() as db:
            for rid in self._owned(db, worker, request_ids):
                self._enter(db, rid, "failed", now,
                            ", reason = ?, failed_at = ?, lease_owner = NULL, lease_until = NULL",
                            (reason, now))


def open_queue(path: Path, synchronous: Synchronous) -> ForgetQueue:
    """The forget queue at `path` (config: `Config.queue_path`, `forget.synchronous`)."""
    return SQLiteQueue(path, synchronous)
