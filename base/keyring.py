"""Crypto-shredding: every stored text is sealed under a data key of its own, and forgetting the
text deletes its key, so whatever copy of the ciphertext a database's files keep (heap pages, dead
row versions, WAL segments, `pg_stats` histograms, backups, replicas) can no longer be read.

    <ring>_keys   name -> its data key, wrapped under the key-encryption key (KEK) of an epoch
    <ring>_epoch  the current epoch (one row)
    <folder>/<ring>-kek-<epoch>   that epoch's KEK: 32 random bytes, 0600, outside the database

Texts are sealed with AES-256-GCM (`cryptography`): a fresh 96-bit nonce per text, and the name
as associated data, so a ciphertext moved to another row does not open. A deleted key row still
lies in the database's files until they are overwritten, wrapped under its epoch's KEK; so after
`forget` deletes keys, `rotate` ends the epoch: it writes the next KEK, rewraps every live key
under it in one transaction, and then destroys the old KEK file. After that, no copy of the key
table from before (a dead row, a WAL segment, a backup) can be unwrapped. What must hold for that: the KEK
folder is not in the database's backups, and deleting a file there deletes it (docs/forget.md,
"Crypto-shredding").

Writes happen in the caller's transaction (`Database.write()`, one writer at a time), which
reads the epoch too: a key created while another process rotates is wrapped under the epoch
that its transaction sees, and the rotation that follows rewraps it.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path
from typing import Iterable, Literal, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .database import Connection, Database
from .errors import LetheError
from .secret import load_secret

NONCE_BYTES = 12  # GCM's standard nonce; random per seal (2^-32 collision bound at 2^32 seals)
KEY_BYTES = 32  # AES-256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {ring}_keys (
    name TEXT PRIMARY KEY,     -- what the key seals: a sample id, a request id
    epoch INTEGER NOT NULL,    -- whose KEK wraps it
    wrapped TEXT NOT NULL      -- base64(nonce | AES-GCM(KEK, data key))
);
CREATE TABLE IF NOT EXISTS {ring}_epoch (
    id INTEGER PRIMARY KEY,    -- 0: one row
    epoch INTEGER NOT NULL,
    pending INTEGER NOT NULL   -- 1: keys were forgotten and the epoch has not ended since
);
INSERT INTO {ring}_epoch (id, epoch, pending) VALUES (0, 0, 0) ON CONFLICT DO NOTHING;
"""


class KeyRingError(LetheError, RuntimeError):
    """A sealed text cannot be opened: its key was shredded, or the text or key was altered."""


def _seal(key: bytes, aad: str, plain: bytes) -> str:
    """base64(nonce | AES-GCM(key, plain, associated data `aad`))."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plain, aad.encode())).decode()


def _open(key: bytes, aad: str, text: str) -> bytes:
    raw = base64.b64decode(text)
    return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad.encode())


class KeyRing:
    def __init__(self, database: Database, folder: Path, ring: str):
        """`ring`: the prefix of its two tables (one ring per component: `samples`,
        `requests`); `folder`: where its KEK files live (shared by every process that shares
        the database)."""
        self.database, self.folder, self.ring = database, Path(folder), ring
        self.folder.mkdir(parents=True, exist_ok=True)
        database.migrate(f"keyring:{ring}", _SCHEMA.replace("{ring}", ring), ())
        # What a process that died between forgetting keys and ending the epoch left undone
        # (the forget worker is restarted at once, and opens its rings again).
        with database.read() as db:
            epoch, pending = db.execute(f"SELECT epoch, pending FROM {ring}_epoch WHERE id = 0"
                                        ).fetchone()
        if pending:
            self.rotate()
        else:
            self._destroy_before(epoch)

    def _kek_file(self, epoch: int) -> Path:
        return self.folder / f"{self.ring}-kek-{epoch}"

    def _new_kek(self, epoch: int) -> bytes:
        """The KEK of an epoch no key is wrapped under yet (the first, or the one `rotate`
        starts), created if missing (by whoever comes first: secret.py)."""
        return load_secret(self._kek_file(epoch))

    def _epoch(self, db: Connection) -> int:
        return db.execute(f"SELECT epoch FROM {self.ring}_epoch WHERE id = 0").fetchone()[0]

    # --- in the caller's transaction --------------------------------------------------------

    def seal(self, db: Connection, items: Sequence[tuple[str, Sequence[str]]]) -> list[list[str]]:
        """Seal the texts of each (name, texts) under a new data key for `name`, created in
        this write transaction (a name sealed again gets a new key); text i of a name is bound
        to it and to i (its associated data), so no sealed text opens in another place."""
        epoch = self._epoch(db)
        kek = self._new_kek(epoch) if epoch == 0 else self._existing_kek(epoch)
        keys = {name: secrets.token_bytes(KEY_BYTES) for name, _ in items}
        db.executemany(
            f"INSERT INTO {self.ring}_keys (name, epoch, wrapped) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET epoch = excluded.epoch, wrapped = excluded.wrapped",
            [(name, epoch, _seal(kek, name, key)) for name, key in keys.items()])
        return [[_seal(keys[name], f"{name}#{i}", text.encode()) for i, text in enumerate(texts)]
                for name, texts in items]

    def open(self, items: Sequence[tuple[str, Sequence[str]]], db: Connection | None = None,
             shredded: Literal["raise", "none"] = "raise") -> list[list[str] | None]:
        """The texts of each (name, sealed texts), as `seal` took them (a text passed as None,
        not asked for, comes back None); KeyRingError if a text does not open where it is. A
        name whose key is gone (shredded since its row was read): KeyRingError, or None in its
        place with `shredded="none"`. `db`: the caller's
        connection, when it is in a transaction (a second one from the pool could wait for one
        that the transactions queued behind it hold)."""
        try:
            keys = self._keys({name for name, _ in items}, db)
        except KeyRingError:  # an epoch ended between reading a key and its KEK: once more
            keys = self._keys({name for name, _ in items}, db)
        gone = [name for name, _ in items if name not in keys]
        if gone and shredded == "raise":
            raise KeyRingError(f"{self.ring}: no key for {gone[0]!r} (shredded)")
        try:
            return [None if name not in keys else
                    [None if text is None else _open(keys[name], f"{name}#{i}", text).decode()
                     for i, text in enumerate(texts)] for name, texts in items]
        except InvalidTag as e:
            raise KeyRingError(f"{self.ring}: a sealed text does not open (altered, or moved "
                               "from another row)") from e

    def _keys(self, names: set[str], db: Connection | None) -> dict[str, bytes]:
        """The data keys of `names` that exist, unwrapped."""
        if db is None:
            with self.database.read() as db:
                return self._keys(names, db)
        names, rows = sorted(names), []
        for i in range(0, len(names), 500):  # a bounded IN list
            chunk = names[i:i + 500]
            rows += db.execute(f"SELECT name, epoch, wrapped FROM {self.ring}_keys "
                               f"WHERE name IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        keks = {epoch: self._existing_kek(epoch) for epoch in {e for _, e, _ in rows}}
        try:
            return {name: _open(keks[epoch], name, wrapped) for name, epoch, wrapped in rows}
        except InvalidTag as e:  # a KEK read while `_destroy` zeroed it: the epoch ended
            raise KeyRingError(f"{self.ring}: a key does not unwrap (its epoch ended while "
                               "this read ran, or the KEK file is not this database's)") from e

    def _existing_kek(self, epoch: int) -> bytes:
        """An epoch's KEK, never created here: a missing one is not made up again (a reader
        racing its destruction, or a keys folder that is not this database's)."""
        try:
            return self._kek_file(epoch).read_bytes()
        except FileNotFoundError as e:
            raise KeyRingError(f"{self.ring}: the key-encryption key of epoch {epoch} is gone "
                               "(the epoch ended while this read ran)") from e

    def seal_unsealed(self, table: str, columns: Sequence[str]) -> None:
        """Seal in place the texts that a Lethe from before sealing wrote: rows of `table`
        (named by their `id`) with `columns[0]` set and no key. Their plain text may linger in
        the database's files (docs/forget.md, "Crypto-shredding")."""
        with self.database.write() as db:
            rows = db.execute(f"SELECT id, {', '.join(columns)} FROM {table} t WHERE "
                              f"{columns[0]} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
                              f"{self.ring}_keys k WHERE k.name = t.id)").fetchall()
            if rows:
                sealed = self.seal(db, [(row[0], row[1:]) for row in rows])
                db.executemany(f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in columns)} "
                               "WHERE id = ?", [(*texts, row[0]) for row, texts in zip(rows, sealed)])

    def forget(self, db: Connection, names: Iterable[str]) -> None:
        """Delete the data keys of `names` in this write transaction; `rotate` once it has
        committed, so that no copy of them left in a file can be unwrapped either."""
        db.executemany(f"DELETE FROM {self.ring}_keys WHERE name = ?", [(n,) for n in names])
        db.execute(f"UPDATE {self.ring}_epoch SET pending = 1 WHERE id = 0")

    # --- ending an epoch ---------------------------------------------------------------------

    def rotate(self) -> int:
        """Write the next epoch's KEK, rewrap every live key under it in one transaction, then
        destroy every older KEK file; returns the new epoch."""
        with self.database.read() as db:
            epoch = self._epoch(db) + 1
        new = self._new_kek(epoch)  # on disk before any row names it
        # Durable whatever `synchronous` says: the old KEK is destroyed once it commits, and a
        # lost commit would leave every key wrapped under a KEK that no longer exists.
        with self.database.write(durable=True) as db:
            current = self._epoch(db)
            if current >= epoch:  # another process ended this epoch meanwhile
                epoch, new = current, self._existing_kek(current)
            db.execute(f"UPDATE {self.ring}_epoch SET epoch = ?, pending = 0 WHERE id = 0",
                       (epoch,))
            rows = db.execute(f"SELECT name, epoch, wrapped FROM {self.ring}_keys "
                              "WHERE epoch <> ?", (epoch,)).fetchall()
            keks = {e: self._existing_kek(e) for e in {e for _, e, _ in rows}}
            db.executemany(f"UPDATE {self.ring}_keys SET epoch = ?, wrapped = ? WHERE name = ?",
                           [(epoch, _seal(new, name, _open(keks[e], name, wrapped)), name)
                            for name, e, wrapped in rows])
        self._destroy_before(epoch)
        return epoch

    def _destroy_before(self, epoch: int) -> None:
        """Destroy the KEK files of epochs before `epoch` (ended: no live key names them)."""
        for path in self.folder.glob(f"{self.ring}-kek-*"):
            if int(path.name.rsplit("-", 1)[1]) < epoch:
                _destroy(path)


def _destroy(path: Path) -> None:
    """Overwrite a key file with zeros, flush it, then unlink it (a file system that copies on
    write keeps the old blocks: docs/forget.md, "Crypto-shredding")."""
    try:
        with open(path, "r+b") as f:
            f.write(bytes(os.fstat(f.fileno()).st_size))
            f.flush()
            os.fsync(f.fileno())
        path.unlink()
    except FileNotFoundError:
        pass  # another process destroyed it first
