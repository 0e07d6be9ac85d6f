"""Raw bytes of files, as someone who copies a folder (a backup, a stolen disk) reads them."""

from __future__ import annotations

from pathlib import Path


def files_holding(folder: Path, texts: list[str]) -> list[str]:
    """'<file under folder>: <text>' for every file under `folder` that holds one of `texts`
    (UTF-8) anywhere in its bytes."""
    found = []
    needles = [t.encode() for t in texts]
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path.relative_to(folder)}: {t.decode()!r}" for t in needles if t in data]
    return found
