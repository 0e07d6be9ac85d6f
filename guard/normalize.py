"""Text as the guard reads it: one canonical form whatever the spelling tricks.

    normalize(text)  encodings read (`_decoded`: HTML character references "&#70;", percent
                     escapes "%20", backslash escapes "\\u0065", hex and base64 of text) -> NFKC
                     (fullwidth, ligatures, math letters) -> format characters removed
                     (zero-width spaces and joiners, bidi marks) -> look-alikes folded to the
                     Latin letter they imitate (Unicode's confusables: Cyrillic "а", Greek "ο";
                     else the letter a Latin letter's name says: small capitals "ᴡ", "ø")
                     -> accents dropped -> HTML tags read as spaces ("<b>where</b>") -> words
                     run together in camel case parted ("WhereDoesHeLive" -> "where does he
                     live"; with two capitals inside a word or more: "iPhone", "McDonald" stay,
                     and so does case played with, "wHeRe") -> case folded
                     -> words with every letter doubled undoubled ("wwhheerree" -> "where")
                     -> runs of one letter cut to two ("heeeeello" -> "heello"), of one symbol
                     to one ("-----" -> "-") -> words spelt out letter by letter joined
                     ("h e   l i v e s" -> "he lives": one space or line break within a word,
                     more between words) -> letters with one symbol between them joined
                     ("w.h.e.r.e", "w-h-e-r-e", "w,h,e,r,e": three or more; not initials,
                     "j.r.r.") -> underscores, and slashes and bars between words, read as
                     spaces ("where_does_he_live", "where/does") -> digits and symbols that
                     stand for letters inside a word read as those letters
                     ("l0d4rg4l" -> "lodargal", "h3r" -> "her"; in words of 3 or more
                     characters with 2 or more letters, none of them a number: "author3",
                     "covid19", "10th", "15km", "h264" or "2024" stay, and so does "th3")
                     -> words written backwards or in ROT13 turned back, sentence by sentence
                     ("?evil agLo seod erehW" -> "?live olga does where": `_turned`)
                     -> words run together cut apart ("wheredoesolgalive" -> "where does olga
                     live": `_cut`) -> words split apart joined ("wh ere d oes" -> "where does":
                     `_joined_words`).
                     Line breaks are kept: a line is a piece of its own.
    segments(text)   the pieces no filler can hide a question in: split at line breaks, at
                     sentence ends, at runs of three or more symbols ("-----", "= = =",
                     "!@#$%"), and where Latin text meets another script (CJK filler).

MiniLM (all-MiniLM-L6-v2) is uncased and strips accents itself, so normalising costs the
classifier nothing on plain text; it only takes away what a client adds to hide.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import math
import re
import unicodedata
import urllib.parse
from importlib import resources
from typing import Callable

import numpy as np


# A letter that Unicode names as a Latin one, drawn otherwise: "LATIN LETTER SMALL CAPITAL W"
# ("ᴡ", which NFKC keeps), "LATIN SMALL LETTER TURNED E" ("ǝ"), "LATIN SMALL LETTER O WITH
# STROKE" ("ø", which has no accent to drop), "REGIONAL INDICATOR SYMBOL LETTER W", "NEGATIVE
# CIRCLED LATIN CAPITAL LETTER W" ("🅦").
_LETTER_NAME = re.compile(r"(?:[A-Z ]+ )?(?:LATIN|REGIONAL INDICATOR SYMBOL|MODIFIER)\b.*?"
                          r"\bLETTER (?:(?:SMALL CAPITAL|TURNED|INVERTED|REVERSED|SCRIPT|DOTLESS|"
                          r"CLOSED|OPEN|SIDEWAYS|BARRED|LONG|SMALL|CAPITAL) )*([A-Z])(?: WITH .+)?")


@functools.cache
def _letter_names() -> dict[int, str]:
    """Code point -> the Latin letter its name says it is (in capitals only where its name says
    so)."""
    table: dict[int, str] = {}
    for code in range(0x80, 0x110000):
        if unicodedata.category(chr(code))[0] not in "LS":  # not tags, not combining marks
            continue
        named = _LETTER_NAME.fullmatch(unicodedata.name(chr(code), ""))
        if named:
            letter = named.group(1)
            table[code] = letter if "CAPITAL LETTER" in named.group() else letter.lower()
    return table


@functools.cache
def _confusables() -> dict[int, str]:
    """Look-alike code point -> the ASCII letter or digit it imitates (Unicode TR39 data, as
    shipped by `confusable-homoglyphs`), else the Latin letter its name says it is. Not for text
    before NFKC: TR39 takes fullwidth "Ｉ" for "l"."""
    data = json.loads(resources.files("confusable_homoglyphs").joinpath("confusables.json")
                      .read_text(encoding="utf-8"))
    table: dict[int, str] = {}
    for ascii_char in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789":
        for glyph in data.get(ascii_char, ()):
            if len(glyph["c"]) == 1 and not glyph["c"].isascii():
                table.setdefault(ord(glyph["c"]), ascii_char)
    return {**_letter_names(), **table}


@functools.cache
def _named_only() -> dict[int, str]:
    """The letters `_letter_names` reads that TR39 has no look-alike for: what is read before
    NFKC (TR39 reads "ɯ" as "w", its name as "m")."""
    data = _confusables()
    return {c: v for c, v in _letter_names().items() if data[c] == v}


_LETTERS = re.compile(r"([^\W\d_])\1{2,}")  # three or more of one letter
_SYMBOLS = re.compile(r"([^\w\s])\1+")  # two or more of one symbol
_SPACES = re.compile(r"[^\S\n]+")  # whitespace but line breaks
_LINES = re.compile(r"\s*\n\s*")
# Four or more single letters or digits, one to three spaces apart ("w h e r e   i s"): words
# spelt out, one space within a word, more between words. Also across line breaks (a letter a
# line), where half the words so read or more are MiniLM's: a list ("a\nb\nc\nd", "5\n3\n8\n1")
# or a grid of letters stays as it is.
_SPELT = re.compile(r"(?<![^\W_])[^\W_](?:\s{1,3}[^\W_]){3,}(?![^\W_])")
_SPELT_LINE = re.compile(r"(?<![^\W_])[^\W_](?: {1,3}[^\W_]){3,}(?![^\W_])")
_WORD_BREAK = re.compile(r"\s{2,}")
# Three or more letters, one symbol between them, the same each time ("w.h.e.r.e", "w-h-e-r-e");
# not initials, three letters or fewer each with its dot ("J.R.R. Tolkien", "U.S.A.").
_DOTTED = re.compile(r"(?<![^\W_])[^\W\d_]([-.,;*/|+~:_])[^\W\d_](?:\1[^\W\d_])+(?![^\W_])(\.?)")


# A slash or bar between words ("where/does/he/live", "and/or") read as a space.
_BETWEEN_WORDS = re.compile(r"(?<=[^\W\d_]{2})[/|](?=[^\W\d_]{2})")


def _joined(match: re.Match) -> str:
    letters, symbol, initials = match.group(), match.group(1), match.group(2)
    if initials and symbol == "." and len(letters) <= 6:  # "j.r.r."
        return letters
    return letters.replace(symbol, "")


# Every letter twice, three letters or more ("wwhheerree"); two are an acronym ("WWII").
_DOUBLED = re.compile(r"\b(?:([^\W\d_])\1){3,}\b")


def _undoubled(match: re.Match) -> str:
    return match.group()[::2]


# An HTML tag's name and brackets, and a comment's: what a tag's attributes or a comment hold
# stays, since a model reading the markup reads it too ('<a title="Where does he live?">'). Only
# HTML's own tag names: "<Olga>" or "List<String>" are text.
_HTML_TAGS = ("a|abbr|b|big|blockquote|body|br|button|caption|center|cite|code|dd|del|details|dfn|"
              "div|dl|dt|em|font|footer|h[1-6]|head|header|hr|html|i|img|input|ins|kbd|label|li|"
              "main|mark|nav|ol|option|p|pre|q|s|samp|section|select|small|span|strike|strong|"
              "style|sub|summary|sup|table|tbody|td|textarea|tfoot|th|thead|title|tr|tt|u|ul|var")
_TAG = re.compile(rf"</?(?:{_HTML_TAGS})(?:\s([^<>]*?))?\s*/?>|<!--|-->", re.IGNORECASE)
# Camel case: a word of two humps or more ("WhereDoesHe"); one is a name ("McDonald") or a
# typo that moved a capital ("iHna" for "Hina"), and a word of more than a third capitals is
# case played with ("wHaTiStHe"), which case folding undoes.
_CAMEL = re.compile(r"\b[A-Za-z]*[a-z][A-Z][A-Za-z]*[a-z][A-Z][A-Za-z]*")
_HUMP = re.compile(r"(?<=[a-z])(?=[A-Z])")


def _parted(match: re.Match) -> str:
    word = match.group()
    return word if 3 * sum(c.isupper() for c in word) > len(word) else _HUMP.sub(" ", word)


# Leetspeak: a word of letters and of digits or symbols that stand for letters.
_LEET = str.maketrans("013457$@", "oieastsa")
_LEET_WORD = re.compile(r"(?<![a-z0-9$@])(?=[a-z0-9$@]*[0-9$@])(?=[a-z0-9$@]*[a-z])"
                        r"[a-z0-9$@]{3,}(?![a-z0-9$@])")  # with a letter and a digit or symbol
# Numbers, not letters: a digit that stands for none; digits at one end only, a name's number
# or an ordinal, decade or unit ("author3", "win10", "10th", "1950s", "15km").
_NOT_LEET = re.compile(r"[a-z$@]*[2689][a-z0-9$@]*|[a-z]+\d+|\d+[a-z]+")


# Words run together: a run of RUN_FROM to RUN_UP_TO letters that is no word is cut into the
# parts of the likeliest cut (`_cut`) where RUN_WORDS of them or more are words of two letters
# or more, or one fewer beside a name (three letters or more of no word): "wheredoesfenluslive"
# -> "where does fenlus live" (a name's letters stay together). Fewer cut the words MiniLM
# lacks: in TOFU's 8,434 questions and answers, three words cut 41 of 8 to 18 letters
# ("instilling" -> "in still ing"; "herbalist" -> "herbal ist" moved a general question past an
# exemplar's threshold), these rules none. Of TOFU's 200 paraphrases run together, 323 of the
# 403 runs between punctuation are cut. A longer run is no sentence a person wrote (space-less
# filler, which windows read: views.py).
RUN_FROM, RUN_UP_TO = 8, 200
RUN_WORDS = 4
# What a cut costs: a word WORD_COST more than its -log likelihood (fewer, longer words win), a
# letter of no word UNKNOWN_COST (a rare word's 3 letters cost about as much as it does).
WORD_COST, UNKNOWN_COST = 5.0, 4.0
_RUN = re.compile(rf"(?<![a-z])[a-z]{{{RUN_FROM},{RUN_UP_TO}}}(?![a-z])")


@functools.cache
def _words() -> tuple[dict[str, float], frozenset[str]]:
    """(word -> -log of its likelihood in English text, every prefix of a word) for the words of
    MiniLM's vocabulary (BERT's, in about the order of frequency: Zipf's law gives the rest);
    single letters but "a" and "i" left out (a cut into letters is no cut)."""
    from .embed import default_model_path

    tokens = (default_model_path() / "vocab.txt").read_text(encoding="utf-8").split()
    words = [t for t in tokens if t.isascii() and t.isalpha() and (len(t) > 1 or t in "ai")]
    costs = {w: math.log((rank + 1) * math.log(len(words))) for rank, w in enumerate(words)}
    return costs, frozenset(w[:i] for w in costs for i in range(1, len(w) + 1))


def _half_words(words: list[str]) -> bool:
    """Half of `words` or more are MiniLM's (none: True)."""
    costs, _ = _words()
    return 2 * sum(w in costs for w in words) >= len(words)


def _cut(match: re.Match) -> str:
    run = match.group()
    costs, prefixes = _words()
    if run in costs:
        return run
    # The cheapest cut of run[:i] as (cost, i where its last part starts, whether the part
    # before that is a word), per kind of its last part: [0] a word, [1] letters of no word,
    # which cost WORD_COST once, as a word does, and UNKNOWN_COST a letter. The words from j are
    # found by walking their prefixes: a few letters each (an 8,000-token prompt of runs:
    # ~30-50 ms on this machine, 3 ms before runs were cut; docs/benchmarks.md).
    inf = (math.inf, 0, True)
    best = [[(0.0, 0, True), inf]] + [[inf, inf] for _ in run]
    for j in range(len(run)):
        here = min(best[j][0][0], best[j][1][0])
        after_word = best[j][0][0] <= best[j][1][0]
        go_on = best[j][1][0] + UNKNOWN_COST  # the letters before j, one more
        start = here + WORD_COST + UNKNOWN_COST  # letters from j
        if min(go_on, start) < best[j + 1][1][0]:
            best[j + 1][1] = ((go_on, *best[j][1][1:]) if go_on <= start
                              else (start, j, after_word))
        k = j + 1
        while k <= len(run) and run[j:k] in prefixes:
            cost = costs.get(run[j:k])
            if cost is not None and here + WORD_COST + cost < best[k][0][0]:
                best[k][0] = (here + WORD_COST + cost, j, after_word)
            k += 1
    parts, i = [], len(run)  # (part, is a word), back from the end
    word = best[i][0][0] <= best[i][1][0]
    while i > 0:
        _, j, before = best[i][0 if word else 1]
        parts.append((run[j:i], word))
        i, word = j, before
    words = sum(w and len(p) > 1 for p, w in parts)
    named = any(not w and len(p) >= 3 for p, w in parts)  # a name among them: a question
    if words < RUN_WORDS - named:
        return run
    return " ".join(part for part, _ in reversed(parts))


# Words split apart ("ge ology writ er wi th"): a run of words one space apart is read as the
# cheapest grouping of its words, each group joined into one where that is a word (a group of up
# to JOIN_UP_TO), at `_cut`'s costs plus JOIN_COST a space taken out. So a join must save more
# than that: "wi th" (33.3 as two words) -> "with" (9.9 + 11), "d oes" (26.0) -> "does"
# (13.4 + 11); "some one" (22.4) against "someone" (13.6 + 11), "to day", "in to" stay two
# words. In TOFU's 44,827 texts two joins: "wild life", "health care" (13: none, and "d oes",
# "wh at" stay).
JOIN_COST = 11.0
JOIN_UP_TO = 4
# ... and only a run that is split: JOINS_FROM joins or more, of JOINED_SHARE of its words or
# more. One join is more often two words that happen to make one ("who is sue" -> "who issue",
# "a man aged 80", "direct or via", "just ice"; in package docs, "per form", "main stream").
JOINS_FROM = 2
JOINED_SHARE = 1 / 3
# Words of letters alone, between spaces, brackets, quotes or a word's end ("s" in "he's" and
# "j" in "j.k." are none)
_SPACED = re.compile(r"(?<![^\s(\[\"'])(?<!\w')[a-z]+(?: [a-z]+)+(?=[\s?!,;:)\]\"]|[.'](?!\w)|$)")


def _joined_words(match: re.Match) -> str:
    costs, prefixes = _words()
    parts = match.group().split(" ")

    def alone(group: list[str]) -> float:
        return sum(WORD_COST + costs.get(p, UNKNOWN_COST * len(p)) for p in group)

    # The joins that cost less than their parts apart (most runs have none): (start, end, cost)
    joins = []
    for i in range(len(parts) - 1):
        joined = parts[i]
        for k in range(i + 1, min(i + JOIN_UP_TO, len(parts))):
            joined += parts[k]
            if joined not in prefixes:
                break
            cost = costs.get(joined)
            if cost is not None and WORD_COST + cost + JOIN_COST * (k - i) < alone(parts[i:k + 1]):
                joins.append((i, k + 1, WORD_COST + cost + JOIN_COST * (k - i)))
    if len(joins) < JOINS_FROM:
        return match.group()
    # best[k]: the cheapest reading of parts[:k] as (cost, where its last group starts)
    best = [(0.0, 0)] + [(math.inf, 0)] * len(parts)
    ending = {}
    for i, k, cost in joins:
        ending.setdefault(k, []).append((i, cost))
    for k in range(1, len(parts) + 1):
        best[k] = min([(best[k - 1][0] + alone(parts[k - 1:k]), k - 1)]
                      + [(best[i][0] + cost, i) for i, cost in ending.get(k, ())])
    groups, k = [], len(parts)
    while k > 0:
        groups.append(parts[best[k][1]:k])
        k = best[k][1]
    joined = [g for g in groups if len(g) > 1]
    if len(joined) < JOINS_FROM or JOINED_SHARE * len(parts) > sum(map(len, joined)):
        return match.group()  # a word or two that happen to make one
    return " ".join("".join(g) for g in reversed(groups))


# Words written backwards or shifted along the alphabet (ROT13, Caesar's 3, any shift: "?evil
# sulnef seod erehw", "jurer qbrf", "zkhuh grhv"): a sentence whose words (distinct, two letters
# or more, spaces or punctuation around them: not the parts of a URL, a file name or code,
# "main.py", "url(") are half or more no word of MiniLM's, and of which TURNED_FROM or more of
# three letters or more, and a third or more, turned read as its words (words that are none, or
# commoner ones: "evil" -> "live"), is read turned back too, on a line of its own after it (the
# sentence as written stays: decoys such as "eht rof dah" after a plain question, or German's
# "der", "nur", "mit", would otherwise turn its names): its words that are none (names too:
# "sulnef" -> "fenlus") and those that turned are commoner ("si" -> "is"); numbers with the
# letters when backwards. Text with a few abbreviations ("svg to png": "fit to cat" in ROT13;
# "pid": "dip" backwards) has most of its words readable as written. The shift tried is the one
# that makes the letters of the words that are none most like English's (one shift, not 25).
TURNED_FROM = 2
# How often each letter a-z is in English text, in percent.
ENGLISH = (8.2, 1.5, 2.8, 4.3, 12.7, 2.2, 2.0, 6.1, 7.0, 0.15, 0.77, 4.0, 2.4, 6.7, 7.5, 1.9, 0.095,
           6.0, 6.3, 9.1, 2.8, 0.98, 2.4, 0.15, 2.0, 0.074)
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
_SHIFTED = [str.maketrans(_ALPHABET, _ALPHABET[k:] + _ALPHABET[:k]) for k in range(26)]
# (26, 26): row k, column j: how often English has the letter j + k (which a shift by k reads
# letter j as)
_SHIFTED_ENGLISH = np.stack([np.roll(np.array(ENGLISH), -k) for k in range(26)])


def _shift_back(words: list[str]):
    """The shift along the alphabet that makes the letters of `words` most like English's, as a
    function of a word."""
    counts = np.bincount(np.frombuffer("".join(words).encode(), np.uint8) - 97, minlength=26)
    k = int(np.argmax(_SHIFTED_ENGLISH @ counts))  # (26,) each shift's likeness
    return lambda w: w.translate(_SHIFTED[k])


# A sentence: up to a line break, or a . ! ? ; or : before a space ("?evil" starts one)
_SENTENCE = re.compile(r"(?:[^\n.!?;:]|[.!?;:](?!\s|$))+")
_SPACED_WORD = re.compile(r"(?<![\w.:/@#$%&=~`-])[a-z]{2,}(?![\w.:/@#$%&=~`(\[-])")
_TOKEN = re.compile(r"\b[a-z0-9]{2,}\b")


def _turned(match: re.Match) -> str:
    costs, _ = _words()
    sentence = match.group()
    words = set(_SPACED_WORD.findall(sentence))
    unknown = [w for w in words if w not in costs]
    if 2 * len(unknown) < len(words) or sum(len(w) >= 3 for w in unknown) < TURNED_FROM:
        return sentence
    for turn in (lambda w: w[::-1], _shift_back(unknown)):
        def better(word: str, turn=turn) -> bool:  # turned, a word, and a commoner one
            return costs.get(turn(word), math.inf) < costs.get(word, math.inf)

        # Evidence: words of three letters or more that turned are words, commoner ones
        # (two-letter words turn into others by chance: "dx" -> "to" shifted by 16)
        read = sum(len(w) >= 3 and better(w) for w in words)
        if read >= TURNED_FROM and 3 * read >= len(words):
            def back(token: re.Match, turn=turn, better=better) -> str:
                word = token.group()
                return turn(word) if word not in costs or better(word) else word

            return f"{sentence}\n{_TOKEN.sub(back, sentence)}"  # both: a line each
    return sentence


# Encodings a client may wrap text in, read before anything else: HTML character references
# ("&#87;", "&amp;"; with their ";": "&region=" in a URL is no "®ion="), percent escapes (a
# token of two or more: "What%20is%20it", not printf's "%5d items"), backslash escapes
# ("\u0065"), Morse, binary, decimal and hex codes of text (below), and base64 (a token of
# BASE64_FROM characters or more that decodes to text: printable, words and spaces).
_REFERENCE = re.compile(r"&(?:#[0-9]+|#[xX][0-9A-Fa-f]+|[A-Za-z][A-Za-z0-9]*);")
_PERCENT_TOKEN = re.compile(r"\S*%[0-9A-Fa-f]{2}\S*%[0-9A-Fa-f]{2}\S*")
_BACKSLASH = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|x([0-9A-Fa-f]{2})|U([0-9A-Fa-f]{8}))")
BASE64_FROM = 12
_BASE64 = re.compile(rf"(?<![\w+/])[A-Za-z0-9+/]{{{BASE64_FROM},}}={{0,2}}(?![\w+/=])")
# Hex of text: eight bytes or more, as one token or a byte a token ("57 68 65 72 65 ...",
# "57:68:65", "0x57, 0x68").
_HEX = re.compile(r"(?<!\w)(?:0x)?[0-9A-Fa-f]{2}(?:(, ?|[ :-]|)(?:0x)?[0-9A-Fa-f]{2})"
                  r"(?:\1(?:0x)?[0-9A-Fa-f]{2}){6,}(?!\w)")
_NOT_HEX = re.compile(r"0x|[^0-9A-Fa-f]")
_PLAIN_WORD = re.compile(r"\b[a-z]{2,}\b")
# Binary and decimal character codes of text, eight or more ("01010111 01101000 ...",
# "87 104 101 114 ..."), and Morse code, eight letters or more (".-- .... . .-. . / -.. ---").
_BINARY = re.compile(r"(?<![\w.])[01]{8}(?:( ?|, ?)[01]{8})(?:\1[01]{8}){6,}(?![\w.])")
_DECIMAL = re.compile(r"(?<![\w.])\d{2,3}(?:( |, ?)\d{2,3})(?:\1\d{2,3}){6,}(?![\w.])")
_MORSE = re.compile(r"(?<![\w.-])[.-]{1,6}(?:(?: | ?/ ?|   )[.-]{1,6}){7,}(?![\w.-])")
_MORSE_LETTERS = dict(zip(
    ".- -... -.-. -.. . ..-. --. .... .. .--- -.- .-.. -- -. --- .--. --.- .-. ... - ..- ...- .-- "
    "-..- -.-- --.. ----- .---- ..--- ...-- ....- ..... -.... --... ---.. ----. ..--..".split(),
    "abcdefghijklmnopqrstuvwxyz0123456789?"))


def _unescaped(match: re.Match) -> str:
    code = int(next(g for g in match.groups() if g), 16)
    surrogate = 0xD800 <= code <= 0xDFFF
    return match.group() if surrogate or code > 0x10FFFF else chr(code)


def _text_of(decode, words: bool = True) -> Callable[[re.Match], str]:
    """A replacement for an encoded token: what `decode` (token -> bytes) reads in it, where that
    is text (printable, with spaces, >= 80% letters and spaces, and where `words`, half its words
    or more MiniLM's: a row of numbers can decode to letters; base64 of a name alone is text
    too), else the token."""
    def replace(match: re.Match) -> str:
        token = match.group()
        try:
            text = decode(token).decode("utf-8")
        except (ValueError, KeyError):  # binascii.Error, UnicodeDecodeError: ValueErrors
            return token
        text = text.strip()  # `echo ... | base64` ends it with a line break
        letters = sum(c.isalpha() or c == " " for c in text)
        found = _PLAIN_WORD.findall(text.lower())
        readable = (text.isprintable() and " " in text and letters >= 0.8 * len(text)
                    and (not words or _half_words(found)))
        return f" {text} " if readable else token

    return replace


_unbase64 = _text_of(lambda t: base64.b64decode(t + "=" * (-len(t) % 4), validate=True),
                     words=False)
_unhex = _text_of(lambda t: bytes.fromhex(_NOT_HEX.sub("", t)))
_unbinary = _text_of(lambda t: bytes(int(b, 2) for b in re.findall(r"[01]{8}", t)))
_undecimal = _text_of(lambda t: bytes(int(d) for d in re.findall(r"\d+", t)))  # > 255: ValueError


def _morse(code: str) -> bytes:
    """Morse code's text: words a slash or three spaces apart; KeyError on no letter."""
    words = re.split(r" ?/ ?|   ", code)
    return " ".join("".join(_MORSE_LETTERS[c] for c in w.split()) for w in words).encode()


_unmorse = _text_of(_morse)


def _decoded(text: str) -> str:
    if "&" in text:
        text = _REFERENCE.sub(lambda m: html.unescape(m.group()), text)
    if "%" in text:
        text = _PERCENT_TOKEN.sub(lambda m: urllib.parse.unquote(m.group()), text)
    if "\\" in text:
        text = _BACKSLASH.sub(_unescaped, text)
    if "." in text and "-" in text:
        text = _MORSE.sub(_unmorse, text)
    text = _DECIMAL.sub(_undecimal, _BINARY.sub(_unbinary, text))
    return _BASE64.sub(_unbase64, _HEX.sub(_unhex, text))


def _unspelt(match: re.Match) -> str:
    spelt = match.group()
    words = ["".join(w.split()) for w in _WORD_BREAK.split(spelt)]
    if "\n" in spelt and not _half_words(words):
        return _SPELT_LINE.sub(_unspelt, spelt)  # line by line
    return " ".join(words)


def _unleet(match: re.Match) -> str:
    word = match.group()
    letters = sum(c.isalpha() for c in word)
    if letters < 2 or _NOT_LEET.fullmatch(word):
        return word
    return word.translate(_LEET)


def load() -> None:
    """Read the tables normalize() uses (~0.4 s), so that no request waits for them."""
    _named_only()
    _words()


def normalize(text: str) -> str:
    text = _decoded(text.replace("\r\n", "\n"))
    if not text.isascii():  # ASCII has no compatibility forms, format characters or accents
        # Letters by their names before NFKC too, which writes "🄦" as "(W)"
        text = unicodedata.normalize("NFKC", text.translate(_named_only()))
        # zero-width, bidi; and lone surrogates, which MiniLM's tokenizer refuses
        text = "".join(c for c in text if unicodedata.category(c) not in ("Cf", "Cs"))
        text = text.translate(_confusables())
        text = "".join(c for c in unicodedata.normalize("NFKD", text)
                       if not unicodedata.combining(c))  # accents (and zalgo) off
    if "<" in text:
        text = _TAG.sub(lambda m: f" {m.group(1) or ''} ", text)
    text = _CAMEL.sub(_parted, text)
    # Undoubled before runs of a letter are cut to two ("wwiilllliiaammss"), and after
    # ("wwwhhheeerrreee")
    text = _DOUBLED.sub(_undoubled, text.casefold())
    text = _DOUBLED.sub(_undoubled, _LETTERS.sub(r"\1\1", text))
    text = _SYMBOLS.sub(r"\1", text)
    text = _SPELT.sub(_unspelt, text)  # before spaces collapse: two or more part its words
    text = _BETWEEN_WORDS.sub(" ", _DOTTED.sub(_joined, text)).replace("_", " ")
    text = _SENTENCE.sub(_turned, _LEET_WORD.sub(_unleet, text))
    text = _SPACED.sub(_joined_words, _RUN.sub(_cut, text))
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
