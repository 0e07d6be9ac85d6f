"""Digests that a forget receipt commits to: an adapter version's files, and a set of keyed
hashes (a Merkle root, so that one hash's membership can later be shown without the others)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from .files import sha256_file

MANIFEST = "manifest.json"  # a version folder's provenance; every other file is the adapter


def merkle_root(hashes: Iterable[str]) -> str:
    """Root of the Merkle tree over the distinct hex hashes, sorted: leaf sha256(0x00 | h), node
    sha256(0x01 | left | right), an odd node carried up unpaired; no leaves: sha256 of nothing.
    Sorted leaves let a proof of non-membership name the two neighbours of a missing hash."""
    level = [hashlib.sha256(b"\x00" + bytes.fromhex(h)).digest() for h in sorted(set(hashes))]
    if not level:
        return hashlib.sha256(b"").hexdigest()
    while len(level) > 1:
        pairs = [level[i:i + 2] for i in range(0, len(level), 2)]
        level = [hashlib.sha256(b"\x01" + p[0] + p[1]).digest() if len(p) == 2 else p[0]
                 for p in pairs]
    return level[0].hex()


def version_digest(folder: Path) -> str:
    """sha256 of the JSON list of [relative name, sha256] of every file of an adapter version's
    folder but its manifest (the weights and config a server loads), sorted by name."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    listing = [[p.relative_to(folder).as_posix(), sha256_file(p)] for p in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()
