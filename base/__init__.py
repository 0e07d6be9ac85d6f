"""Shared machinery that guard (ECO), adapters (APA) and serving all use: the one error base,
durable files, keyed hashes, signed forget receipts. A leaf package: it imports nothing of
Lethe and nothing heavy (no torch, no numpy), so `lethe receipt verify` starts at once.
"""

from .digests import MANIFEST, merkle_root, version_digest
from .errors import LetheError
from .files import fsync_dir, fsync_tree, sha256_file, write_atomic
from .receipts import (FORMAT, HASH_KEY, PUBLIC_KEY, SAMPLE_FIELDS, SIGNING_KEY, Check, Receipt,
                       ReceiptError, ReceiptInvalid, RequestEvidence, ShardEvidence, Signer,
                       check_store, check_texts, owner_hash, public_key_record,
                       read_public_key, sample_hash, verify_signature)
from .secret import keyed_hash, load_secret

__all__ = [
    "FORMAT", "HASH_KEY", "MANIFEST", "PUBLIC_KEY", "SAMPLE_FIELDS", "SIGNING_KEY", "Check",
    "LetheError", "Receipt", "ReceiptError", "ReceiptInvalid", "RequestEvidence",
    "ShardEvidence", "Signer", "check_store", "check_texts", "fsync_dir", "fsync_tree",
    "keyed_hash", "load_secret", "merkle_root", "owner_hash", "public_key_record",
    "read_public_key", "sample_hash", "sha256_file", "verify_signature", "version_digest",
    "write_atomic",
]
