"""`lethe receipt verify`: check a forget receipt offline (base/receipts.py; docs/receipts.md).

It imports base alone (no torch, no config), so it starts at once. Exit 0: every check passed;
1: a check failed (the lines say which); 2: the command must change (an unreadable receipt or
key, --texts without --store).
"""

from __future__ import annotations

import json
from pathlib import Path

from base import (HASH_KEY, PUBLIC_KEY, SAMPLE_FIELDS, Check, Receipt, ReceiptError,
                  ReceiptInvalid, check_store, check_texts, read_public_key, verify_signature)

from ..errors import UsageError
from .common import add_command, emit


def cmd_verify(args) -> None:
    if args.texts and not args.store:
        raise UsageError("--texts needs --store: the keyed hashes are under the store's "
                         f"{HASH_KEY}")
    receipt = Receipt.read(_read(args.receipt), str(args.receipt))
    key, source = _public_key(args)
    try:
        verify_signature(receipt, key)
        checks = [Check("signature", True, f"Ed25519, key {receipt.key_id} ({source})")]
    except ReceiptInvalid as e:
        # Nothing else is checked: the rest of an unsigned receipt says nothing.
        checks = [Check("signature", False, str(e))]
    else:
        if args.store:
            checks += check_store(receipt, args.store)
        if args.texts:
            checks += check_texts(receipt, _read_bytes(args.store / HASH_KEY),
                                  _samples(args.texts))
    failed = [c for c in checks if not c.ok]
    emit(args, {"request": receipt.request.id, "verified": not failed,
                "checks": [c.__dict__ for c in checks]},
         [f"receipt of forget request {receipt.request.id}"]
         + [f"  {'ok  ' if c.ok else 'FAIL'} {c.what}: {c.detail}" for c in checks])
    if failed:
        raise ReceiptInvalid(f"the receipt does not verify: {len(failed)} of {len(checks)} "
                             f"check(s) failed ({', '.join(c.what for c in failed)})")


def _public_key(args) -> tuple[bytes, str]:
    """The key to check the signature with: --key, else the public key the store keeps."""
    if args.key:
        return read_public_key(_read(args.key), str(args.key)), str(args.key)
    if args.store:
        path = args.store / PUBLIC_KEY
        return read_public_key(_read(path), str(path)), f"the store's {PUBLIC_KEY}"
    raise UsageError("no key to check the signature with: pass --key FILE (what GET "
                     "/v1/receipts/key answers) or --store DIR")


def _read(path: Path) -> str:
    return _read_bytes(path).decode("utf-8", errors="replace")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ReceiptError(f"cannot read {path}: {e.strerror}") from e


def _samples(path: Path) -> list[dict[str, str]]:
    """The owner's samples, JSONL as `lethe train --data` reads it: id, owner, prompt, response."""
    samples = []
    for number, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            samples.append({f: record[f] for f in SAMPLE_FIELDS if isinstance(record[f], str)})
        except (ValueError, KeyError, TypeError) as e:
            raise ReceiptError(f"{path}:{number}: not a sample (a JSON object with string "
                               f"{', '.join(SAMPLE_FIELDS)}): {e}") from e
        if len(samples[-1]) != len(SAMPLE_FIELDS):
            raise ReceiptError(f"{path}:{number}: {', '.join(SAMPLE_FIELDS)} must be strings")
    return samples


def add_commands(sub) -> None:
    receipt = sub.add_parser("receipt", help="forget receipts").add_subparsers(
        dest="receipt_command", required=True)
    verify = add_command(receipt, "verify", cmd_verify,
                         "check a forget receipt: its signature; with --store, the adapters and "
                         "trained-on sets it names; with --texts, the owner's samples")
    verify.add_argument("receipt", type=Path,
                        help="the receipt (GET /v1/forget/{id}/receipt, as JSON)")
    verify.add_argument("--key", type=Path,
                        help="the server's public key (what GET /v1/receipts/key answers); "
                             f"default: the store's {PUBLIC_KEY}, with --store")
    verify.add_argument("--store", type=Path,
                        help="the shard store folder (LETHE_HOME/apa): recompute the adapters' "
                             "digests and trained-on roots, check the forgotten hashes absent")
    verify.add_argument("--texts", type=Path,
                        help="the owner's original samples (JSONL: id, owner, prompt, response): "
                             "check they hash to the receipt's forgotten samples (needs --store)")
