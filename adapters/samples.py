"""Training samples: one JSON object per line with id, owner, prompt, response."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable


class SampleFormatError(ValueError):
    """A samples file has a line that is not a valid sample; the message names file and line."""


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


def read_samples(path: Path) -> list[Sample]:
    samples, seen = [], set()
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SampleFormatError(f"{where}: not JSON: {e.msg}") from e
            fields = ("id", "owner", "prompt", "response")
            missing = [k for k in fields if not isinstance(record.get(k), str) or not record[k]]
            if missing:
                raise SampleFormatError(f"{where}: missing or empty string field(s): {', '.join(missing)}")
            if record["id"] in seen:
                raise SampleFormatError(f"{where}: duplicate sample id {record['id']!r}")
            seen.add(record["id"])
            samples.append(Sample(*(record[k] for k in fields)))
    return samples
