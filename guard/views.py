"""What the guard reads of a request: everything the model reads, in pieces no wrapper hides.

A request is flagged if any of its views is. The views of a request's texts (every message of
every role, or a completion prompt), each normalised first (normalize.py: look-alikes, zero-width
characters, case, repeated characters), are:

- each text alone, and all of them joined (a question split across two messages);
- the segments of each (normalize.segments: lines, sentences, what runs of symbols such as 260
  dashes or `=` separate, and runs of another script such as CJK filler);
- overlapping windows of `WINDOW` tokens, `STRIDE` apart, over every segment longer than that
  (filler with no punctuation). A token is a word, a symbol, or `CHUNK` letters of a longer run
  without spaces, so text without spaces is windowed too: MiniLM reads only its first 256 word
  pieces, so a padded question embeds like the padding unless a view isolates it.

Nothing is capped, so no amount of filler pushes a question out of view: the number of views
grows with the prompt's length, as the model's own work does, and the server refuses a prompt
longer than the context before the guard reads it (`model.max_model_len`). Which of the pieces
MiniLM then reads is the first stage's choice (screen.py): the texts and the pieces nearest
forgotten content.
"""

from __future__ import annotations

import re

from .normalize import normalize, segments

# Tokens. Measured on TOFU forget paraphrases inside 300 words of unpunctuated filler a side
# (exemplar rule, onnx-int8): flagged 0.58 with 24-word windows 12 apart, 0.86 with 16 / 8,
# 0.90 with 16 / 4, retain paraphrases so wrapped never.
WINDOW = 16
STRIDE = 4
CHUNK = 12  # letters of a space-less run per token: about 3 word pieces
_TOKEN = re.compile(rf"\w{{1,{CHUNK}}}|[^\w\s]")


def windows(text: str, size: int = WINDOW, stride: int = STRIDE) -> list[str]:
    """Windows of `size` tokens, `stride` apart; the last one ends at the text's end."""
    tokens = _TOKEN.findall(text)
    if len(tokens) <= size:
        return []
    starts = list(range(0, len(tokens) - size + 1, stride))
    if starts[-1] != len(tokens) - size:
        starts.append(len(tokens) - size)
    return [" ".join(tokens[i:i + size]) for i in starts]


def views(texts: list[str]) -> list[str]:
    """The texts to check, normalised: each given text's own view first (one per text, in
    order, empty ones included, so that view i is text i), then their join and the pieces, with
    no duplicates among those."""
    texts = [normalize(t) for t in texts]
    present = [t for t in texts if t]
    wholes = present + ([" ".join(present)] if len(present) > 1 else [])
    pieces = []
    for text in wholes:
        split = segments(text)
        pieces += split + [w for s in split for w in windows(s)]
    extra = dict.fromkeys(p for p in wholes[len(present):] + pieces if p not in texts)
    return texts + list(extra)
