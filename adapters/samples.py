"""Training samples: id, owner, prompt, response.

Files are JSONL (one object per line) or a JSON array. Each record is either Lethe's own form
({"id", "owner", "prompt", "response"}) or TALLRec's instruction form ({"instruction", "input",
"output"}, optional "id"/"owner"; a missing id is "<file stem>-<index>", a missing owner the id).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .errors import AdapterError

FIELDS = ("id", "owner", "prompt", "response")
TALLREC_FIELDS = ("instruction", "input", "output")


class SampleFormatError(AdapterError, ValueError):
    """A samples file has a record that is not a valid sample; the message names file and record."""


@dataclass(frozen=True)
class Sample:
    id: str
    owner: str  # whose data this is: the unit a user asks to forget
    prompt: str
    response: str


def write_samples(samples: Iterable[Sample], path: Path) -> None:
    with open(path, "w") as f:
        for s in samples:
            f.write(json.dumps(asdict(s), ensure_ascii=False) + "\n")


def _records(path: Path) -> Iterator[tuple[str, object]]:
    """(where, parsed record) for each record of a JSONL file or a JSON array file."""
    text = Path(path).read_text()
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise SampleFormatError(f"{path}: not a JSON array: {e.msg}") from e
        yield from ((f"{path}[{i}]", r) for i, r in enumerate(records))
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                raise SampleFormatError(f"{path}:{lineno}: not JSON: {e.msg}") from e


def _sample(record: object, where: str, default_id: str) -> Sample:
    if not isinstance(record, dict):
        raise SampleFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if all(k in record for k in TALLREC_FIELDS) and "prompt" not in record:
        record = {"id": record.get("id", default_id), "owner": record.get("owner"),
                  "prompt": "\n\n".join(p for p in (record["instruction"], record["input"]) if p),
                  "response": record["output"]}
        record["owner"] = record["owner"] or record["id"]
    missing = [k for k in FIELDS if not isinstance(record.get(k), str) or not record[k]]
    if missing:
        raise SampleFormatError(f"{where}: missing or empty string field(s): {', '.join(missing)} "
                                f"(expected {', '.join(FIELDS)} or {', '.join(TALLREC_FIELDS)})")
    return Sample(*(record[k] for k in FIELDS))


def read_samples(path: Path) -> list[Sample]:
    samples, seen = [], set()
    for index, (where, record) in enumerate(_records(path)):
        sample = _sample(record, where, default_id=f"{Path(path).stem}-{index:06d}")
        if sample.id in seen:
            raise SampleFormatError(f"{where}: duplicate sample id {sample.id!r}")
        seen.add(sample.id)
        samples.append(sample)
    return samples
