"""Prompt files and prompt text: what the guard reads and classifies.

Files are JSONL or a JSON array of objects with a `question` or `prompt` field and optionally an
`answer`/`response` (TOFU's files, Lethe's samples files). TOFU's perturbed files add
`paraphrased_answer` and `perturbed_answer`, which the truth-ratio score reads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import GuardError

PROMPT_KEYS = ("question", "prompt")
ANSWER_KEYS = ("answer", "response")


class PromptFileError(GuardError, ValueError):
    """A prompt file cannot be read or has a record without a prompt; the message names both."""


@dataclass(frozen=True)
class Item:
    prompt: str
    answer: str | None = None
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = ()


def _first(record: dict, keys: tuple[str, ...]) -> str | None:
    return next((record[k] for k in keys if isinstance(record.get(k), str) and record[k]), None)


def read_items(path: str | Path) -> list[Item]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise PromptFileError(f"cannot read prompt file {path}: {e.strerror}") from e
    try:
        if text.lstrip().startswith("["):
            records = [(f"{path}[{i}]", r) for i, r in enumerate(json.loads(text))]
        else:
            records = [(f"{path}:{n}", json.loads(line))
                       for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{path}: not JSON or JSONL: {e.msg} (line {e.lineno})") from e
    items = []
    for where, record in records:
        prompt = _first(record, PROMPT_KEYS) if isinstance(record, dict) else None
        if prompt is None:
            raise PromptFileError(f"{where}: expected an object with a non-empty string field "
                                  f"{' or '.join(PROMPT_KEYS)}")
        perturbed = record.get("perturbed_answer") or ()
        items.append(Item(prompt=prompt, answer=_first(record, ANSWER_KEYS),
                          paraphrased_answer=record.get("paraphrased_answer"),
                          perturbed_answers=tuple([perturbed] if isinstance(perturbed, str)
                                                  else perturbed)))
    if not items:
        raise PromptFileError(f"{path}: no prompts")
    return items


# ChatML and similar markup: special tokens such as <|im_start|>, and the role line after one.
_MARKUP = re.compile(r"<\|[a-z_]+\|>(?:(?:system|user|assistant)\n)?")


def strip_markup(text: str) -> str:
    """The text a user wrote, without chat-template markup, so a classifier sees content only.
    Spacing stays as written: normalize() reads it (more spaces part words spelt out letter by
    letter; a line is a view of its own, views.py), and MiniLM's tokenizer ignores it."""
    return _MARKUP.sub(" ", text).strip()
