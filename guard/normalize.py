"""Text as the guard reads it: one canonical form whatever the spelling tricks.

    normalize(text)  NFKC (fullwidth, ligatures, math letters) -> format characters removed
                     (zero-width spaces and joiners, bidi marks) -> look-alikes folded to the
                     Latin letter they imitate (Unicode's confusables: Cyrillic "а", Greek "ο")
                     -> accents dropped -> case folded -> runs of one letter cut to two
                     ("heeeeello" -> "heello"), of one symbol to one ("-----" -> "-")
                     -> words spelt out letter by letter joined ("h e   l i v e s" -> "he
                     lives": one space within a word, more between words) -> digits and
                     symbols that stand for letters inside a word read as those letters
                     ("l0d4rg4l" -> "lodargal", "h3r" -> "her"; in words of 3 or more
                     characters with 2 or more letters, none of them a number: "author3",
                     "covid19", "10th", "15km", "h264" or "2024" stay, and so does "th3").
                     Line breaks are kept: a line is a piece of its own.
    segments(text)   the pieces no filler can hide a question in: split at line breaks, at
                     sentence ends, at runs of three or more symbols ("-----", "= = =",
                     "!@#$%"), and where Latin text meets another script (CJK filler).

MiniLM (all-MiniLM-L6-v2) is uncased and strips accents itself, so normalising costs the
classifier nothing on plain text; it only takes away what a client adds to hide.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from importlib import resources


@functools.cache
def _confusables() -> dict[int, str]:
    """Look-alike code point -> the ASCII letter or digit it imitates (Unicode TR39 data, as
    shipped by `confusable-homoglyphs`)."""
    data = json.loads(resources.files("confusable_homoglyphs").joinpath("confusables.json")
                      .read_text(encoding="utf-8"))
    table: dict[int, str] = {}
    for ascii_char in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789":
        for glyph in data.get(ascii_char, ()):
            if len(glyph["c"]) == 1 and not glyph["c"].isascii():
                table.setdefault(ord(glyph["c"]), ascii_char)
    return table


_LETTERS = re.compile(r"([^\W\d_])\1{2,}")  # three or more of one letter
_SYMBOLS = re.compile(r"([^\w\s])\1+")  # two or more of one symbol
_SPACES = re.compile(r"[^\S\n]+")  # whitespace but line breaks
_LINES = re.compile(r"\s*\n\s*")
# Four or more single letters or digits, one to three spaces apart ("w h e r e   i s"): words
# spelt out, one space within a word, more between words.
_SPELT = re.compile(r"(?<![^\W_])[^\W_](?: {1,3}[^\W_]){3,}(?![^\W_])")
_WORD_BREAK = re.compile(r" {2,}")
# Leetspeak: a word of letters and of digits or symbols that stand for letters.
_LEET = str.maketrans("013457$@", "oieastsa")
_LEET_WORD = re.compile(r"(?<![a-z0-9$@])(?=[a-z0-9$@]*[0-9$@])(?=[a-z0-9$@]*[a-z])"
                        r"[a-z0-9$@]{3,}(?![a-z0-9$@])")  # with a letter and a digit or symbol
# Numbers, not letters: a digit that stands for none; digits at one end only, a name's number
# or an ordinal, decade or unit ("author3", "win10", "10th", "1950s", "15km").
_NOT_LEET = re.compile(r"[a-z$@]*[2689][a-z0-9$@]*|[a-z]+\d+|\d+[a-z]+")


def _unspelt(match: re.Match) -> str:
    return " ".join(w.replace(" ", "") for w in _WORD_BREAK.split(match.group()))


def _unleet(match: re.Match) -> str:
    word = match.group()
    letters = sum(c.isalpha() for c in word)
    if letters < 2 or _NOT_LEET.fullmatch(word):
        return word
    return word.translate(_LEET)


def normalize(text: str) -> str:
    if not text.isascii():  # ASCII has no compatibility forms, format characters or accents
        text = unicodedata.normalize("NFKC", text)
        text = "".join(c for c in text if unicodedata.category(c) != "Cf")  # zero-width, bidi
        text = text.translate(_confusables())
        text = "".join(c for c in unicodedata.normalize("NFKD", text)
                       if not unicodedata.combining(c))  # accents (and zalgo) off
    text = _SYMBOLS.sub(r"\1", _LETTERS.sub(r"\1\1", text.casefold()))
    text = _SPELT.sub(_unspelt, text)  # before spaces collapse: two or more part its words
    text = _LEET_WORD.sub(_unleet, text)
    return _LINES.sub("\n", _SPACES.sub(" ", text)).strip()


# A piece ends at a line break, after a sentence's end, and at a run of >= 3 symbols (spaces
# between them allowed).
_BREAK = re.compile(r"\n+|(?<=[.!?;])\s+|(?:[^\w\s]\s*){3,}")


_LEADING = re.compile(r"^[\W_]+")  # what a piece starts with before its first letter or digit


def _by_script(text: str) -> list[str]:
    """`text` cut where ASCII letters and digits meet other-script ones (after normalize(),
    Latin is ASCII); symbols and spaces stay with the run they follow."""
    if text.isascii():
        return [text]
    runs, start, script = [], 0, None
    for i, c in enumerate(text):
        if c.isalnum():
            kind = c.isascii()
            if script is not None and kind != script:
                runs.append(text[start:i])
                start = i
            script = kind
    return runs + [text[start:]]


def segments(text: str) -> list[str]:
    """The pieces of a normalised text (see the module's docstring), each from its first letter
    or digit; pieces with none are dropped."""
    return [s for piece in _BREAK.split(text) for s in (_LEADING.sub("", r).strip()
                                                        for r in _by_script(piece)) if s]
