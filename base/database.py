"""Where Lethe's tables live (the lineage in adapters/, the forget queue in serving/): one
`Database`, chosen by its URL from a registry of backends.

    a path, or sqlite:///abs/path.db   SQLite, embedded, one machine (the default): sqlite.py's
                                      rules (WAL, synchronous=FULL, secure_delete, checkpoint)
    postgresql://user:pw@host/db       PostgreSQL, shared by several server replicas and workers

Code above this module writes one SQL for both: `?` placeholders, `ON CONFLICT DO NOTHING`,
`CASE` instead of summing booleans, and `{real}` / `{bytes}` for the two column types whose
names differ. What differs is here:

- `write()`: one writer at a time per database, as SQLite's BEGIN IMMEDIATE gives; on
  PostgreSQL a transaction-scoped advisory lock, so a read-then-update (a lease) never races.
- `migrate()`: forward migrations counted per component in the `lethe_schema` table (an old
  SQLite file counted them in its user_version, which seeds the count).
- `exclusive(name, wait)`: a lock held until the block ends or its holder dies (SIGKILL
  included): flock(2) on a file beside the SQLite database; on PostgreSQL a session advisory
  lock, which the server drops with the holder's connection. At most one holder anywhere in the
  cluster, waited for at most `wait` seconds: a stopped holder (SIGSTOP, a VM paused) keeps it,
  and a PostgreSQL holder loses it unawares when its idle connection is cut, so it saves work
  but guarantees nothing (what keeps a retrain exact is the lineage's generation fence).
- `purged(table)`: after raw text is removed. SQLite: the WAL is truncated (secure_delete has
  zeroed the pages); a reader that holds the WAL past a few seconds leaves that pending
  (`purge_pending()`) for `finish_purges()` (sqlite.py). PostgreSQL: the table is vacuumed, so
  no live or dead row holds the text;
  the server's own WAL segments and free space keep old bytes until they are recycled and
  overwritten (docs/replicas.md: what the database's storage must guarantee).
- `notify(channel)` in a write transaction, `listener(channel).wait(timeout)`: PostgreSQL's
  LISTEN/NOTIFY, so another replica learns of a forget request at once; SQLite has none (its
  listener just waits out the timeout: the caller's periodic sync is the mechanism there).

`url` and every error message name the database without its password (`user:***@`,
`?password=***`), also where the driver's own message quotes it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import unquote

from .errors import LetheError
from .locks import file_lock, poll
from .registry import Registry
from .sqlite import (Synchronous, checkpoint, checkpoint_pending, connect, finish_checkpoints,
                     transaction)


class DatabaseError(LetheError, RuntimeError):
    """A store's database cannot be opened, read or written (the message says which and why)."""


class Connection(ABC):
    """One connection, within `read()` or `write()`: SQL with `?` placeholders."""

    @abstractmethod
    def execute(self, sql: str, params: Sequence = ()) -> Any:
        """Returns a cursor (fetchone, fetchall, rowcount)."""

    @abstractmethod
    def executemany(self, sql: str, rows: Sequence[Sequence]) -> int:
        """Returns the number of rows changed."""

    def notify(self, channel: str) -> None:
        """Tell listeners on `channel`, once this transaction commits."""


class Listener(ABC):
    @abstractmethod
    def wait(self, timeout: float) -> bool:
        """Block until a notification on the channel or `timeout` seconds; whether one came."""


class Database(ABC):
    url: str  # for messages: never holds a password
    types: dict[str, str]  # {real}, {bytes} in DDL
    _secrets: tuple[str, ...] = ()  # texts that no message may show (a URL's passwords)

    @abstractmethod
    def read(self) -> Iterator[Connection]: ...

    @abstractmethod
    def write(self, durable: bool = False) -> Iterator[Connection]:
        """A transaction, committed at the end of the block, rolled back on an error; no other
        write to this database runs beside it. `durable`: on disk when the block ends whatever
        `synchronous` says (for a commit that something irreversible follows)."""

    @abstractmethod
    def exclusive(self, name: str, wait: float) -> Iterator[bool]:
        """Hold the cluster-wide lock `name` for the block, waiting for it at most `wait`
        seconds; yields whether it is held (False: another holder kept it that long)."""

    @abstractmethod
    def purged(self, table: str) -> None:
        """Raw text was removed from `table`: leave no copy of it in the database's files, or
        leave that pending (`purge_pending`) when a reader holds it up."""

    def purge_pending(self) -> bool:
        """Whether a purge in this process left removed text in a file (until `finish_purges`)."""
        return False

    @abstractmethod
    def listener(self, channel: str) -> Listener: ...

    def migrate(self, component: str, schema: str, migrations: Sequence[str]) -> None:
        """Create `component`'s tables if missing (`schema`: statements, each ending with `;` at
        the end of a line), then apply the `migrations` it has not had yet, in order. Safe from
        several processes."""
        with self.write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS lethe_schema "
                       "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            for statement in schema.format(**self.types).split(";\n"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT version FROM lethe_schema WHERE component = ?",
                             (component,)).fetchone()
            version = row[0] if row else self._legacy_version(db)
            for statement in migrations[version:]:
                db.execute(statement.format(**self.types))
            db.execute("INSERT INTO lethe_schema (component, version) VALUES (?, ?) "
                       "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                       (component, len(migrations)))

    def _legacy_version(self, db: Connection) -> int:
        return 0

    @abstractmethod
    def _driver_error(self) -> type[Exception]:
        """The base of the errors the backend's driver raises."""

    @contextmanager
    def _errors(self, context: str | None = None) -> Iterator[None]:
        """The driver's errors as DatabaseError, saying where (`context`, else the URL)."""
        try:
            yield
        except self._driver_error() as e:
            text = _scrub(str(e), self._secrets)
            # A driver message that quoted a password is not chained: a logged traceback would
            # print it.
            raise DatabaseError(f"{context or self.url}: {text}") from (
                e if text == str(e) else None)

    def close(self) -> None:
        """Release what this process holds open on the database (its connections)."""


# --- SQLite ---------------------------------------------------------------------------------


class _SQLiteConnection(Connection):
    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def execute(self, sql, params=()):
        return self._db.execute(sql, tuple(params))

    def executemany(self, sql, rows):
        return self._db.executemany(sql, rows).rowcount


class _Sleeper(Listener):
    def wait(self, timeout):
        time.sleep(timeout)
        return False


class SQLiteDatabase(Database):
    types = {"real": "REAL", "bytes": "BLOB"}

    def __init__(self, path: Path, synchronous: Synchronous = "FULL"):
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.synchronous = synchronous
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatabaseError(f"cannot create {self.path.parent}: {e.strerror}") from e

    def _driver_error(self):
        return sqlite3.Error

    @contextmanager
    def read(self):
        with self._errors(), closing(connect(self.path, self.synchronous)) as db:
            yield _SQLiteConnection(db)

    @contextmanager
    def write(self, durable=False):
        with self._errors(), transaction(self.path, "FULL" if durable else self.synchronous
                                         ) as db:
            yield _SQLiteConnection(db)

    @contextmanager
    def exclusive(self, name, wait):
        (self.path.parent / "locks").mkdir(exist_ok=True)
        with file_lock(self.path.parent / "locks" / f"{name}.lock", wait) as held:
            yield held

    def purged(self, table):
        with self._errors():
            checkpoint(self.path, self.synchronous)

    def purge_pending(self):
        return checkpoint_pending(self.path)

    def listener(self, channel):
        return _Sleeper()

    def _legacy_version(self, db):
        (version,) = db.execute("PRAGMA user_version").fetchone()
        return version


# --- PostgreSQL -----------------------------------------------------------------------------


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory lock key for `name`."""
    return int.from_bytes(hashlib.sha256(f"lethe:{name}".encode()).digest()[:8], "big",
                          signed=True)


class _PostgresConnection(Connection):
    def __init__(self, db):
        self._db = db

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def execute(self, sql, params=()):
        return self._db.execute(self._sql(sql), tuple(params))

    def executemany(self, sql, rows):
        with self._db.cursor() as cursor:
            cursor.executemany(self._sql(sql), rows)
            return cursor.rowcount

    def notify(self, channel):
        self._db.execute(f"NOTIFY {channel}")


class _PostgresListener(Listener):
    """LISTEN on a connection of its own, opened again after an error (the wait then falls back
    to sleeping out its timeout, so the caller's periodic sync still runs)."""

    def __init__(self, database: "PostgresDatabase", channel: str):
        self.database, self.channel = database, channel
        self._db = None

    def wait(self, timeout):
        psycopg = _psycopg()
        try:
            if self._db is None or self._db.closed:
                self._db = self.database._connect()
                self._db.execute(f"LISTEN {self.channel}")
            return any(True for _ in self._db.notifies(timeout=timeout, stop_after=1))
        except (psycopg.Error, DatabaseError):  # the server gone or unreachable
            if self._db is not None:
                self._db.close()
            self._db = None
            time.sleep(timeout)
            return False


def _psycopg():
    import psycopg  # imported when a PostgreSQL store is first used: ~0.15 s, SQLite needs none

    return psycopg


class PostgresDatabase(Database):
    types = {"real": "DOUBLE PRECISION", "bytes": "BYTEA"}

    POOL_SIZE = 8  # connections kept open per process and database: a read costs ~0.3 ms, not
    # a connection's setup (3.8 ms over a local socket, more with TLS and a password)
    WAIT_SECONDS = 5.0  # for a connection, before the caller hears the database is unavailable

    def __init__(self, url: str, synchronous: Synchronous = "FULL"):
        from psycopg_pool import ConnectionPool

        self._dsn = url
        self.url = _redact(url)
        self._secrets = _passwords(url)
        # synchronous: PostgreSQL commits durably by default (synchronous_commit=on); NORMAL
        # maps to synchronous_commit=off, which, like SQLite's NORMAL, may lose the last commits.
        self._kwargs = {"autocommit": True, "connect_timeout": 10,
                        **({} if synchronous == "FULL" else
                           {"options": "-c synchronous_commit=off"})}
        self._pool = ConnectionPool(self._dsn, kwargs=self._kwargs, min_size=1,
                                    max_size=self.POOL_SIZE, timeout=self.WAIT_SECONDS,
                                    check=ConnectionPool.check_connection, open=False)
        # Fail now, at once, naming the server and the driver's reason (the pool would retry
        # for its timeout and report only that), rather than on the first request.
        self._connect().close()
        try:
            with self._errors(f"cannot connect to {self.url}"):
                self._pool.open(wait=True, timeout=10)
        except DatabaseError:
            self._pool.close()
            raise

    def _driver_error(self):
        return _psycopg().Error

    def _connect(self):
        """A connection of its own, outside the pool (held for a lock or a LISTEN)."""
        with self._errors(f"cannot connect to {self.url}"):
            return _psycopg().connect(self._dsn, **self._kwargs)

    @contextmanager
    def read(self):
        with self._errors(), self._pool.connection() as db:
            yield _PostgresConnection(db)

    @contextmanager
    def write(self, durable=False):
        with self._errors(), self._pool.connection() as db, db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("write"),))
            if durable:
                db.execute("SET LOCAL synchronous_commit TO on")
            yield _PostgresConnection(db)

    @contextmanager
    def exclusive(self, name, wait):
        with closing(self._connect()) as db:  # closing it (or the holder dying) drops the lock
            with self._errors(f"{self.url}: lock {name}"):
                held = poll(lambda: db.execute("SELECT pg_try_advisory_lock(%s)",
                                               (_lock_key(name),)).fetchone()[0], wait)
            yield held

    def purged(self, table):
        with self.read() as db:
            db.execute(f"VACUUM {table}")

    def listener(self, channel):
        return _PostgresListener(self, channel)

    def close(self):
        self._pool.close()
        with _OPENED_LOCK:
            for key in [k for k, v in _OPENED.items() if v is self]:
                del _OPENED[key]


def finish_purges() -> list[str]:
    """Try once more each purge that a reader held up in this process (a SQLite WAL left
    untruncated); the URLs of the databases still pending."""
    try:
        return [f"sqlite:///{path}" for path in finish_checkpoints()]
    except sqlite3.Error as e:
        raise DatabaseError(f"finishing a purge: {e}") from e


def _redact(url: str) -> str:
    """`url` with its passwords masked (`user:***@`, `?password=***`), for messages and logs."""
    return _scrub(url, _passwords(url))


def _passwords(url: str) -> tuple[str, ...]:
    """The secrets in `url`, as written and percent-decoded (a driver's message may quote
    either): the password of its user information, read both as libpq reads it (up to the first
    '@' before any '/') and up to the last '@' (what an unencoded '@' or '/' in it meant), and the
    value of every query parameter whose name holds "pass" (password, sslpassword, passfile)."""
    rest = url.partition("://")[2]
    first = min((i for i in (rest.find("@"), rest.find("/")) if i >= 0), default=-1)
    ats = {i for i in (first, rest.rfind("@")) if i >= 0 and rest[i] == "@"}
    found = [rest[:i].partition(":")[2] for i in ats]
    for tail in [rest, *(rest[i + 1:] for i in ats)]:
        params = (p.partition("=") for p in tail.partition("?")[2].split("&"))
        found += [value for name, eq, value in params if eq and "pass" in unquote(name).lower()]
    return tuple({form for secret in found if secret for form in (secret, unquote(secret))})


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with each of `secrets` masked."""
    for secret in sorted(secrets, key=len, reverse=True):  # a longer form before its part
        text = text.replace(secret, "***")
    return text


# --- registry -------------------------------------------------------------------------------

# `scheme://...` URLs open with `open_url(url, synchronous)`.
class DatabaseSchemeError(LetheError, ValueError):
    """A database scheme registered twice."""


DATABASES: Registry[Callable[[str, Synchronous], Database]] = Registry("database scheme",
                                                                       DatabaseSchemeError)
register_database = DATABASES.register
database_schemes = DATABASES.names


_OPENED: dict[tuple[str, str], Database] = {}  # one per URL in a process: one connection pool
_OPENED_LOCK = threading.Lock()


def open_database(target: str | Path, synchronous: Synchronous = "FULL") -> Database:
    """The database at `target`: a path (SQLite) or a URL whose scheme is registered. A URL
    opened twice in one process gives the same object (the queue and the lineage share one
    pool of connections, and recover together after an outage)."""
    if isinstance(target, Path) or "://" not in target:
        return SQLiteDatabase(Path(target), synchronous)
    scheme = target.split("://", 1)[0]
    if scheme not in DATABASES:  # the registry's message, and which URL (without its secrets)
        raise DatabaseError(f"{DATABASES.unknown(scheme)}; in {_redact(target)}")
    open_url = DATABASES.get(scheme)
    with _OPENED_LOCK:
        if (target, synchronous) not in _OPENED:
            _OPENED[target, synchronous] = open_url(target, synchronous)
        return _OPENED[target, synchronous]


register_database("sqlite", lambda url, sync: SQLiteDatabase(Path(url[len("sqlite://"):]), sync))
register_database("postgresql", PostgresDatabase)
register_database("postgres", PostgresDatabase)  # libpq accepts both spellings
