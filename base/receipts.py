"""Forget receipts: what a completed forget request proves, signed by the server, checkable
offline by anyone who holds its public key (`lethe receipt verify`; docs/receipts.md).

    request   its id, the owner's keyed hash and the forgotten samples' keyed hashes (secret.py:
              HMAC under the store's secret.key; whoever holds the key and the owner's texts can
              recompute them, nobody else learns anything from them)
    shards    for each shard that held a forgotten sample: the version served before and after,
              the digest of each version's adapter files, and the Merkle root of the keyed
              hashes of the samples the new version was trained on (digests.py)
    guard     the trained guard classifier's version before and after (pending requests'
              exemplars live in the server's memory only and are never part of it)
    the base model's digest, whether the text is purged, who completed it and when
    router    the digest of everything routing reads once the request is exact (the live
              samples' routing keys, the shards' centroids, the loss-table rows:
              adapters.RouterState); a store trained without the forgotten samples has the
              same (tests/adapters/test_store.py)

The signature is Ed25519 over `payload()`: the receipt without its signature as JSON with sorted
keys, no spaces and ASCII escapes (Python's json.dumps(sort_keys=True, separators=(",", ":"));
floats as the shortest text that reads back the same, as in JavaScript). Changing, adding or
dropping any field breaks it, and a receipt is read strictly (no field coerced from another
type), so what a reader sees is what was signed. With the store, a verifier also checks that no
adapter version of an affected shard on disk was trained on a forgotten hash, that no cached
mixture is built on a deleted version, and recomputes the new version's digest and Merkle root.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (Ed25519PrivateKey,
                                                               Ed25519PublicKey)
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from .digests import MANIFEST, merkle_root, version_digest
from .errors import LetheError
from .files import write_atomic
from .secret import keyed_hash, load_secret

FORMAT = "lethe-receipt/1"
SAMPLE_FIELDS = ("id", "owner", "prompt", "response")  # what a sample's keyed hash covers, in order
# In the shard store's folder: the key of the keyed hashes (the lineage's content hashes); the
# signing key's private seed (every worker and replica that shares the store signs with it;
# never handed out) and its public half (what an auditor with a copy of the store reads).
HASH_KEY = "secret.key"
SIGNING_KEY = "receipt.key"
PUBLIC_KEY = "receipt.pub"
MIXTURE = "mixture.json"  # a cached mixture's parts: [{"shard", "version", "weight"}]

Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]  # a sha256, an HMAC
VersionId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{1,64}$")]  # a weights prefix
# Relative to the store, below it (no "..", no root): a verifier opens it.
Folder = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")]


class ReceiptError(LetheError, ValueError):
    """A receipt, key or texts file that cannot be read (exit 2: the command must change)."""

    exit_code = 2


class ReceiptInvalid(LetheError):
    """A receipt that does not verify (exit 1); the checks say which part."""


def sample_hash(secret: bytes, sample: dict[str, str]) -> str:
    """A sample's keyed hash: the lineage's content hash, the receipt's leaf."""
    return keyed_hash(secret, *(sample[f] for f in SAMPLE_FIELDS))


def owner_hash(secret: bytes, owner: str) -> str:
    """An owner's keyed hash, tagged so that it can never equal a sample's."""
    return keyed_hash(secret, "owner", owner)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RequestEvidence(_Strict):
    id: str
    owner_hash: Hex64 | None  # None: the request named samples, not an owner
    sample_hashes: list[Hex64]
    prompts: int  # how many other texts the guard was handed (their text is purged)


class ShardEvidence(_Strict):
    shard: int
    folder: Folder  # the shard's versions: <store>/<folder>/<version>/
    old_version: VersionId | None  # None: it served nothing before
    old_digest: Hex64 | None
    new_version: VersionId | None  # None: every sample of it is forgotten; it serves nothing
    new_digest: Hex64 | None
    samples: int  # how many samples the new version was trained on
    trained_on_root: Hex64  # merkle_root of their keyed hashes
    forgotten_ids_absent: bool
    train_seconds: float


class Receipt(_Strict):
    format: Literal["lethe-receipt/1"]
    request: RequestEvidence
    shards: list[ShardEvidence]
    base_model_sha256: Hex64 | None
    guard_before: str | None  # the trained guard classifier's version; None: none trained
    guard_after: str | None
    text_purged: bool  # False: a reader held up the purge, which a later round completes
    coalesced_with: list[str]  # other requests made exact by the same retrain
    worker: str
    completed_at: float  # unix time
    # None: a receipt from before the field (its signature covers no `router_digest`), or a
    # store from before routing keys (its partition centroids hold forgotten samples' share)
    router_digest: Hex64 | None = None
    key_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")] | None = None
    signature: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{128}$")] | None = None

    def payload(self) -> bytes:
        """What the signature covers: every field but the signature, as canonical JSON."""
        older = {"router_digest"} if self.router_digest is None else set()
        return json.dumps(self.model_dump(mode="json", exclude={"signature"} | older),
                          sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def read(cls, text: str, source: str) -> Receipt:
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'receipt'}: {err['msg']}"
                                 for err in e.errors()[:5])
            raise ReceiptError(f"{source} is not a Lethe receipt ({problems})") from e


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


def public_key_record(public_key: bytes) -> dict:
    """What GET /v1/receipts/key serves, receipt.pub holds and `lethe receipt verify --key`
    reads."""
    return {"algorithm": "ed25519", "public_key": public_key.hex(), "key_id": key_id(public_key)}


def read_public_key(text: str, source: str) -> bytes:
    """A public key from `public_key_record`'s JSON, or its 64 hex digits."""
    try:
        try:
            key = bytes.fromhex(text.strip())
        except ValueError:
            key = bytes.fromhex(json.loads(text)["public_key"])
        Ed25519PublicKey.from_public_bytes(key)
    except (ValueError, KeyError, TypeError) as e:
        raise ReceiptError(f"{source} holds no Ed25519 public key (the JSON of GET "
                           f"/v1/receipts/key, or 64 hex digits): {e}") from e
    return key


class Signer:
    """The server's receipt-signing key: an Ed25519 key whose 32-byte seed is a secret file
    (secret.py: created whole at first use, mode 0600), shared by every process of a deployment
    that shares the file."""

    def __init__(self, path: Path):
        try:
            self._key = Ed25519PrivateKey.from_private_bytes(load_secret(path))
        except ValueError as e:
            raise ReceiptError(f"{path} is not a receipt-signing key (32 bytes): {e}") from e
        self.public_key = self._key.public_key().public_bytes_raw()
        self.key_id = key_id(self.public_key)

    @classmethod
    def of_store(cls, store_root: Path) -> Signer:
        """The signer of the shard store at `store_root`: its key created at first use, and its
        public half written beside it for auditors (PUBLIC_KEY)."""
        signer = cls(Path(store_root) / SIGNING_KEY)
        public = Path(store_root) / PUBLIC_KEY
        if not public.exists():
            write_atomic(public, json.dumps(signer.record()))
        return signer

    def record(self) -> dict:
        return public_key_record(self.public_key)

    def sign(self, receipt: Receipt) -> Receipt:
        unsigned = receipt.model_copy(update={"key_id": self.key_id, "signature": None})
        return unsigned.model_copy(update={"signature": self._key.sign(unsigned.payload()).hex()})


def verify_signature(receipt: Receipt, public_key: bytes) -> None:
    """Raise ReceiptInvalid unless `receipt` is signed by the key `public_key`, unchanged."""
    if receipt.key_id != key_id(public_key):
        raise ReceiptInvalid(f"the receipt names signing key {receipt.key_id or '(none)'}, not "
                             f"this key ({key_id(public_key)})")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            bytes.fromhex(receipt.signature or ""), receipt.payload())
    except InvalidSignature as e:
        raise ReceiptInvalid("the signature does not match the receipt: it was changed after "
                             "signing, or signed by another key") from e


# --- checks against the store and the owner's texts ---------------------------------------------


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    detail: str


def check_store(receipt: Receipt, store: Path) -> list[Check]:
    """Per shard: the old version's folder is gone, no version of the shard on disk lists a
    forgotten hash among those it was trained on, and the new version (while it is still on
    disk: a later retrain replaces it) has the receipt's digest and Merkle root; for the store,
    no cached mixture is built on a version the receipt says was deleted."""
    store = Path(store).resolve()
    forgotten, checks = set(receipt.request.sample_hashes), []
    for s in receipt.shards:
        name, folder = f"shard {s.shard}", (store / s.folder).resolve()
        if not folder.is_relative_to(store):  # Folder's pattern already forbids it
            raise ReceiptError(f"{name}: folder {s.folder} is outside the store")
        if s.old_version and s.old_version != s.new_version:
            gone = not (folder / s.old_version).exists()
            checks.append(Check(f"{name}: old version {s.old_version} deleted", gone,
                                "gone from the store" if gone else "its folder is still there"))
        checks.append(_no_version_trained_on(name, folder, forgotten))
        if s.new_version is not None:
            checks += _new_version(name, folder / s.new_version, s)
    deleted = {(s.shard, s.old_version) for s in receipt.shards
               if s.old_version and s.old_version != s.new_version}
    built_on = [path.parent.name for path in sorted(store.rglob(MIXTURE))
                if any((p.get("shard"), p.get("version")) in deleted
                       for p in _read_json(path, {}).get("parts", []))]
    checks.append(Check("no cached mixture built on a deleted version", not built_on,
                        f"{len(built_on)} still on disk: {', '.join(built_on)} (a serving "
                        "replica deletes them at its next sync)" if built_on else "none"))
    return checks


def _no_version_trained_on(name: str, folder: Path, forgotten: set[str]) -> Check:
    """No adapter version of the shard on disk was trained on a forgotten hash."""
    versions = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                      ) if folder.is_dir() else []
    tainted, unknown = [], []
    for version in versions:
        hashes = _read_json(version / MANIFEST, {}).get("content_hashes")
        if not isinstance(hashes, list):
            unknown.append(version.name)
        elif forgotten & set(hashes):
            tainted.append(version.name)
    problems = ([f"listing a forgotten hash: {', '.join(tainted)}"] if tainted else []) + (
        [f"no readable content hashes (trained before receipts?): {', '.join(unknown)}"]
        if unknown else [])
    return Check(f"{name}: no version on disk trained on a forgotten sample", not problems,
                 "; ".join(problems) or f"{len(versions)} version(s) checked")


def _new_version(name: str, folder: Path, s: ShardEvidence) -> list[Check]:
    if not (folder / MANIFEST).is_file():
        return [Check(f"{name}: new version {s.new_version}", True,
                      "superseded by a later retrain and no longer on disk: its digest and "
                      "root cannot be recomputed")]
    digest = version_digest(folder)
    checks = [Check(f"{name}: adapter digest", digest == s.new_digest,
                    digest if digest == s.new_digest else
                    f"files hash to {digest}, the receipt says {s.new_digest}")]
    hashes = _read_json(folder / MANIFEST, {}).get("content_hashes")
    try:
        root = merkle_root(hashes) if isinstance(hashes, list) else None
    except (TypeError, ValueError):  # not hex strings
        root = None
    checks.append(Check(f"{name}: trained-on Merkle root", root == s.trained_on_root,
                        f"{len(hashes)} samples" if root == s.trained_on_root else
                        f"the manifest's hashes give {root}, the receipt says "
                        f"{s.trained_on_root}"))
    return checks


def _read_json(path: Path, default):
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return default
    return value if isinstance(value, type(default)) else default


def check_texts(receipt: Receipt, secret: bytes, samples: list[dict[str, str]]) -> list[Check]:
    """The owner's original samples (id, owner, prompt, response) hash, under the store's key, to
    hashes the receipt names as forgotten; their owner to the receipt's owner hash."""
    named = set(receipt.request.sample_hashes)
    hashes = {sample_hash(secret, s) for s in samples}
    found = len(hashes & named)
    checks = [Check("texts: keyed hashes named by the receipt", bool(samples) and found ==
                    len(hashes), f"{found} of {len(samples)} texts; {len(named - hashes)} of "
                    f"the receipt's {len(named)} hashes not among them")]
    if receipt.request.owner_hash is not None:
        owners = {s["owner"] for s in samples}
        ok = bool(owners) and all(owner_hash(secret, o) == receipt.request.owner_hash
                                  for o in owners)
        checks.append(Check("texts: owner hash", ok, "matches" if ok else
                            f"{len(owners)} owner name(s), none or not all of them the "
                            "receipt's owner"))
    return checks
