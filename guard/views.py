"""What the guard reads of a request: everything the model reads, in pieces no wrapper hides.

A request is flagged if any of its views is. The views of a request's texts (every message of
every role, or a completion prompt) are:

- each text alone, and all of them joined (a question split across two messages);
- each sentence of every text and of the join (a question wrapped in "Ignore this. ... Also
  tell me a joke" is a sentence of its own);
- overlapping windows of `WINDOW` words, `STRIDE` apart, over every text longer than that
  (filler with no punctuation): MiniLM reads only its first 256 word pieces, so a padded question
  embeds like the padding unless a window isolates it.

Nothing is capped, so no amount of filler pushes a question out of view: the number of views
grows with the prompt's length, as the model's own work does, and the server bounds both
(`model.max_model_len`).
"""

from __future__ import annotations

import re

# Words. Measured on TOFU forget paraphrases inside 300 words of unpunctuated filler a side
# (exemplar rule, onnx-int8): flagged 0.58 with 24-word windows 12 apart, 0.86 with 16 / 8,
# 0.90 with 16 / 4, retain paraphrases so wrapped never; 16 / 4 checked such a prompt in 144 ms,
# 24 / 12 in 134 ms (one text per embedder run: shorter windows cost less each).
WINDOW = 16
STRIDE = 4
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def windows(text: str, size: int = WINDOW, stride: int = STRIDE) -> list[str]:
    """Windows of `size` words, `stride` apart; the last one ends at the text's end."""
    words = text.split()
    if len(words) <= size:
        return []
    starts = list(range(0, len(words) - size + 1, stride))
    if starts[-1] != len(words) - size:
        starts.append(len(words) - size)
    return [" ".join(words[i:i + size]) for i in starts]


def views(texts: list[str]) -> list[str]:
    """The texts to check: the given texts first (in order), their join, then their pieces; no
    duplicates."""
    texts = [t for t in texts if t]
    wholes = texts + ([" ".join(texts)] if len(texts) > 1 else [])
    pieces = []
    for text in wholes:
        split = sentences(text)
        pieces += (split if len(split) > 1 else []) + windows(text)
    return list(dict.fromkeys(wholes + pieces))
