"""Shared machinery that guard (ECO), adapters (APA) and serving all use: the one error base,
registries, durable files and versioned folders, locks, keyed hashes, databases (SQLite,
PostgreSQL) and the key ring that seals text in them, devices, signed forget receipts, lazy
package surfaces. A leaf package: it imports nothing of Lethe and nothing heavy (no torch, no
numpy; psycopg when a PostgreSQL URL is first opened), so `lethe receipt verify` starts at once
(the device check imports torch only when it resolves a device).
"""

from .database import (Connection, Database, DatabaseError, database_schemes, finish_purges,
                       open_database, register_database)
from .devices import DeviceError, device_name, resolve_device
from .digests import MANIFEST, merkle_root, version_digest
from .errors import LetheError
from .files import fsync_dir, fsync_tree, made_once, sha256_file, write_atomic
from .keyring import KeyRing, KeyRingError
from .locks import file_lock, is_locked, poll, shared_lock
from .receipts import (FORMAT, HASH_KEY, PUBLIC_KEY, SAMPLE_FIELDS, SIGNING_KEY, Check, Receipt,
                       ReceiptError, ReceiptInvalid, RequestEvidence, ShardEvidence, Signer,
                       check_store, check_texts, owner_hash, public_key_record,
                       read_public_key, sample_hash, verify_signature)
from .registry import Registry
from .secret import keyed_hash, load_secret
from .versions import StagingArea, VersionedDir

__all__ = [
    "FORMAT", "HASH_KEY", "MANIFEST", "PUBLIC_KEY", "SAMPLE_FIELDS", "SIGNING_KEY", "Check",
    "Connection", "Database", "DatabaseError", "DeviceError", "KeyRing", "KeyRingError",
    "LetheError", "Receipt",
    "ReceiptError", "ReceiptInvalid", "Registry", "RequestEvidence", "ShardEvidence", "Signer",
    "StagingArea", "VersionedDir", "check_store", "check_texts", "database_schemes", "device_name",
    "file_lock", "finish_purges", "fsync_dir", "fsync_tree", "is_locked", "keyed_hash",
    "load_secret", "made_once", "merkle_root", "open_database", "owner_hash", "poll",
    "public_key_record", "read_public_key", "register_database", "resolve_device", "sample_hash",
    "sha256_file", "shared_lock", "verify_signature", "version_digest", "write_atomic",
]
