"""The forget-request queue: durable, leased, behind a small interface.

A request moves through `received -> guarded -> retraining -> completed`, or to `failed` (with
the reason) and back to `retraining` on its next attempt: a forget request is a legal obligation
that does not expire, so failures are retried for as long as it takes, after a wait that doubles
per attempt up to a cap. It is durable before the API answers 202: SQLite commits in WAL mode
with `synchronous=FULL` (NORMAL can lose a committed transaction on power loss), PostgreSQL
with `synchronous_commit=on`. Workers take requests under a lease that they extend with
heartbeats; a dead worker's lease runs out and its requests are taken again.

A lease takes one group of requests that share shards (the oldest waiting request, and every
waiting request that touches a shard of the group, transitively) and never a request touching
a shard that another worker's live lease holds: so several workers retrain different shards at
once, and the requests of one shard share one retrain.

`ForgetQueue` is the interface the server, the worker and the CLI use; `SQLQueue` implements it
on a database (adapters.open_database): a SQLite file beside the data (one machine) or
PostgreSQL, which several server replicas and workers share (`store.url`). Submissions and
completions NOTIFY the `lethe_forget` channel, so every replica's guard hears of them at once.

Raw text (the request's own `prompts`) is kept only until the request completes: then it is
removed (SQLite: zeroed in its page, WAL truncated; PostgreSQL: the table vacuumed). A
request's dedup key is an HMAC under a secret key file, so it does not give the prompts back to
a guesser. Schema changes are forward migrations (base/database.py).
"""

from __future__ import annotations

import json
import time
import uuid
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from base import Database, DatabaseError, KeyRing, keyed_hash, load_secret, open_database

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
    def submit(self, owner: str | None, sample_ids: list[str], prompts: list[str],
               shards: list[int] | None = None, guard_within: float | None = None
               ) -> tuple[ForgetRequest, bool]:
        """Store a request durably; (request, created). A request for the same sample ids and
        prompts as an existing one returns that one, created False (idempotent). `shards`: those
        its samples are in (None: unknown, leased apart from known ones). `guard_within`: the
        seconds the submitting server has to guard it (`mark_guarded`), during which no worker
        leases it, so that it is guarded before it is retrained; one that dies before is left
        to any worker after them."""

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
        """Take the requests due (waiting: received or guarded; lease ran out; failed and retry
        due) of one shard group, none of whose shards another worker's live lease holds; they
        become `retraining` under `worker`'s lease for `seconds`."""

    @abstractmethod
    def heartbeat(self, worker: str, request_ids: list[str], seconds: float) -> None:
        """Extend `worker`'s lease on these requests."""

    @abstractmethod
    def complete(self, worker: str, receipts: dict[str, dict]) -> None:
        """retraining -> completed with a receipt each; their prompts are purged."""

    @abstractmethod
    def wait(self, timeout: float) -> bool:
        """Block until a request is submitted or completed anywhere (so far as the store can
        tell: PostgreSQL's NOTIFY), or `timeout` seconds; whether something happened."""

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
    lease_until {real},
    failed_at {real},
    receipt TEXT,
    seq INTEGER NOT NULL         -- submission order
);
CREATE INDEX IF NOT EXISTS requests_state ON requests(state)
"""
# Forward migrations, in order (base/database.py counts them per database).
_MIGRATIONS = (
    "ALTER TABLE requests ADD COLUMN retry_at {real}",  # 1: capped exponential backoff
    "ALTER TABLE requests ADD COLUMN shards TEXT",  # 2: JSON list; per-shard-group leases
)
CHANNEL = "lethe_forget"  # NOTIFY'd on submit and complete
_COLUMNS = "id, owner, sample_ids, state, prompts, attempts, reason, times, receipt, retry_at"


class SQLQueue(ForgetQueue):
    """The queue in a database (SQLite or PostgreSQL); `secret_file` keys the dedup hash and
    must be the same file for every process that shares the database."""

    def __init__(self, database: Database, secret_file: Path):
        self.database = database
        self._secret = load_secret(Path(secret_file))
        self._listener = database.listener(CHANNEL)
        with self._errors():
            database.migrate("queue", _SCHEMA, _MIGRATIONS)
            # A request's prompts are sealed under a key of its own, shredded when it completes.
            self.keys = KeyRing(database, Path(secret_file).parent / "keys", "requests")
            self.keys.seal_unsealed("requests", ("prompts",))  # an older queue's

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except DatabaseError as e:
            raise QueueError(f"forget queue: {e}") from e

    @contextmanager
    def _read(self):
        with self._errors(), self.database.read() as db:
            yield db

    @contextmanager
    def _write(self):
        with self._errors(), self.database.write() as db:
            yield db

    def _rows(self, db, where: str, params=()) -> list[ForgetRequest]:
        rows = db.execute(f"SELECT {_COLUMNS} FROM requests WHERE {where} ORDER BY seq",
                          tuple(params)).fetchall()
        sealed = [(r[0], [r[4]]) for r in rows if r[4] is not None]
        # shredded="none": a request completed since its row was read has no prompts.
        prompts = {rid: json.loads(texts[0]) for (rid, _), texts in
                   zip(sealed, self.keys.open(sealed, db, shredded="none")) if texts}
        return [ForgetRequest(id=r[0], owner=r[1], sample_ids=json.loads(r[2]), state=r[3],
                              prompts=prompts.get(r[0]), attempts=r[5],
                              reason=r[6], times=json.loads(r[7]),
                              receipt=None if r[8] is None else json.loads(r[8]), retry_at=r[9])
                for r in rows]

    @staticmethod
    def _enter(db, request_id: str, state: State, now: float, extra: str = "",
               params: tuple = ()) -> None:
        """Move a request to `state`, recording when it first entered it."""
        (times,) = db.execute("SELECT times FROM requests WHERE id = ?", (request_id,)).fetchone()
        times = json.loads(times)
        times.setdefault(state, now)
        db.execute(f"UPDATE requests SET state = ?, times = ?{extra} WHERE id = ?",
                   (state, json.dumps(times), *params, request_id))

    def _owned(self, db, worker: str, request_ids: list[str]) -> list[str]:
        """Those of the requests still under `worker`'s lease."""
        return [r.id for r in self._rows(
            db, f"state = 'retraining' AND lease_owner = ? AND id IN "
                f"({','.join('?' * len(request_ids))})", (worker, *request_ids))]

    def submit(self, owner, sample_ids, prompts, shards=None, guard_within=None):
        # Identity of a request's content: the same ids and prompts are the same request.
        key = keyed_hash(self._secret, json.dumps([sorted(set(sample_ids)), sorted(set(prompts))]))
        with self._write() as db:
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
            [[prompts_sealed]] = self.keys.seal(db, [(request.id, [json.dumps(request.prompts)])])
            db.execute(
                "INSERT INTO requests (id, key, owner, sample_ids, prompts, state, times, seq, "
                "shards, lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (request.id, key, owner, json.dumps(request.sample_ids),
                 prompts_sealed, request.state, json.dumps(request.times), seq,
                 None if shards is None else json.dumps(sorted({int(k) for k in shards})),
                 None if guard_within is None else request.times["received"] + guard_within))
            db.notify(CHANNEL)
        return request, True

    def get(self, request_id):
        with self._read() as db:
            rows = self._rows(db, "id = ?", (request_id,))
        if not rows:
            raise UnknownRequestError(request_id)
        return rows[0]

    def list(self, states=STATES):
        with self._read() as db:
            return self._rows(db, f"state IN ({','.join('?' * len(states))})", states)

    def counts(self):
        with self._read() as db:
            rows = dict(db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state")
                        .fetchall())
        return {state: rows.get(state, 0) for state in STATES}

    def mark_guarded(self, request_id):
        with self._write() as db:
            if self._rows(db, "id = ? AND state = 'received'", (request_id,)):
                self._enter(db, request_id, "guarded", time.time(), ", lease_until = NULL")

    def lease(self, worker, seconds):
        now = time.time()
        with self._write() as db:
            due = db.execute(
                "SELECT id, shards FROM requests WHERE state = 'guarded' "
                "OR (state = 'received' AND (lease_until IS NULL OR lease_until < ?)) "
                "OR (state = 'retraining' AND lease_until < ?) "
                "OR (state = 'failed' AND retry_at <= ?) ORDER BY seq", (now, now, now)).fetchall()
            held = db.execute(
                "SELECT shards FROM requests WHERE state = 'retraining' AND lease_until >= ? "
                "AND lease_owner != ?", (now, worker)).fetchall()
            ids = _shard_group([(i, _shard_keys(k)) for i, k in due],
                               {key for (k,) in held for key in _shard_keys(k)})
            for request_id in ids:
                self._enter(db, request_id, "retraining", now,
                            ", lease_owner = ?, lease_until = ?, attempts = attempts + 1",
                            (worker, now + seconds))
            return self._rows(db, f"id IN ({','.join('?' * len(ids))})", ids) if ids else []

    def heartbeat(self, worker, request_ids, seconds):
        with self._write() as db:
            db.executemany("UPDATE requests SET lease_until = ? WHERE id = ? AND lease_owner = ? "
                           "AND state = 'retraining'",
                           [(time.time() + seconds, rid, worker) for rid in request_ids])

    def complete(self, worker, receipts):
        now = time.time()
        with self._write() as db:
            owned = self._owned(db, worker, list(receipts))
            for rid in owned:
                self._enter(db, rid, "completed", now,
                            ", prompts = NULL, reason = NULL, lease_owner = NULL, retry_at = NULL")
                db.execute("UPDATE requests SET receipt = ? WHERE id = ?",
                           (json.dumps(receipts[rid]), rid))
            self.keys.forget(db, owned)
            db.notify(CHANNEL)
        with self._errors():  # the purged prompts: unreadable in any copy, and no copy left
            self.keys.rotate()
            self.database.purged("requests")

    def fail(self, worker, request_ids, reason, retry_after, retry_max):
        now = time.time()
        with self._write() as db:
            for rid in self._owned(db, worker, request_ids):
                (attempts,) = db.execute("SELECT attempts FROM requests WHERE id = ?",
                                         (rid,)).fetchone()
                self._enter(db, rid, "failed", now,
                            ", reason = ?, failed_at = ?, retry_at = ?, lease_owner = NULL, "
                            "lease_until = NULL",
                            (reason, now, now + backoff(attempts, retry_after, retry_max)))

    def wait(self, timeout):
        return self._listener.wait(timeout)


def _shard_keys(shards_json: str | None) -> set[str]:
    """A request's shards as lease keys; an unknown set ('*') groups with the other unknowns."""
    return {"*"} if shards_json is None else {str(k) for k in json.loads(shards_json)}


def _shard_group(due: list[tuple[str, set[str]]], held: set[str]) -> list[str]:
    """The ids to lease from `due` ((id, shard keys), oldest first): the oldest request none of
    whose shards is `held` elsewhere, then, until nothing changes, every due request that shares
    a shard with the group and touches no held one."""
    free = [(i, keys) for i, keys in due if not keys & held]
    if not free:
        return []
    group, shards = {free[0][0]}, set(free[0][1])
    grown = True
    while grown:
        grown = False
        for i, keys in free:
            if i not in group and keys & shards:
                group.add(i)
                shards |= keys
                grown = True
    return [i for i, _ in free if i in group]


def open_queue(target: Path | str, synchronous: Literal["FULL", "NORMAL"],
               secret_file: Path) -> ForgetQueue:
    """The forget queue at `target`: a SQLite file or a database URL (config: `store.url`,
    `forget.synchronous`)."""
    return SQLQueue(open_database(target, synchronous), secret_file)
