"""The guard's first stage: which pieces of a prompt MiniLM reads.

A check reads every view of a request (views.py). The texts themselves are always embedded by
MiniLM (the router needs their vectors too). Their pieces (segments and windows: a 600-word
prompt has ~170, an 8,000-token one ~2,000) are scored here, cheaply, and MiniLM reads the
`read_count(P)` best-scoring of the P pieces: `PIECES`, plus `SHARE` of them.

Every rule that can flag a view needs it near something: a pending request's exemplars (the
exemplar rule and the window head) or the trained classifier's support (classifier.py, rule 2).
Those are the anchors. A piece's score against an anchor set is its highest cosine similarity to
one of its rows, in the static space (static.py) and, for pending requests, in the character
3-grams of its uncommon words (a misspelt name keeps most of its 3-grams while its word pieces
change), less the set's threshold: the pieces nearest forgotten content, relative to how near
its own forms come, rank first.

Why a count and not a threshold: the time a check takes must not tell a client whether its
prompt is near forgotten content (docs/guard.md, "Timing"). Reading every piece above a
threshold would make prompts near a pending request slower than others of their length; a
count fixed by the number of pieces costs the same for every prompt of that length, pending
requests or not (the 3-grams are computed even with none pending, for the same reason).

Thresholds: each anchor set's lets through 99.5% of its own texts' forms, scored
leave-one-text-out (a pending request: each text and its misspelt copies against the request's
other texts; a trained guard: its held-out forget prompts against its fitting ones), clipped to
[`FLOOR`, `CEILING`]. Measured on TOFU: paraphrases of a forgotten author's questions, and those
with typos in 15% of the words, score >= 0.60 against that author's questions and answers in
99.5% of cases; hence the ceiling.

What the count cannot do: a prompt holding more than `read_count` pieces that out-rank its
question on this score, yet are not flagged by MiniLM, hides the question
(bench/bench_guard.py measures the decoy form: the question's own words, shuffled, as filler).
The screen also tells the window head (guard.py) whether a view names someone a pending request
names (`named`): the head is fitted on a few people's questions against other people's, and
scores anyone asked the same way high. A request's names are the words its texts capitalise
inside a sentence and never write in lower case (a person, a place; no stop word), and their
uncommon words (a name in lower case). A view names one where one of its uncommon words is a
name, or a letter dropped from or added to one, or, in words of `SWAP_FROM` letters or more, a
letter swapped or replaced (typos; "ulkatthi" for "ulkathi"), word by word, so that misspelt
common words beside a name do not hide it; two words that are a name together, spelt right,
count too, where one is uncommon (a name split by a space: "fen lus"). Measured on TOFU
(bench/bench_guard_tofu.py, forget10 pending, 5 / 40 / 180 retained authors): holdout authors'
questions flagged by the guard 0.25 / 0.058 / 0.03 -> 0.075 / 0.0175 / 0.0075, typo forms
0.995 / 0.975 / 0.975 either way; other gates tried are in docs/benchmarks.md. A view without
an uncommon word (a name of common words, spelt right: nothing to tell it by) is not gated.
Anchors of a pending request, its names included, are kept in memory only, and dropped with its
exemplars.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .normalize import normalize
from .static import StaticEmbedder


# Pieces MiniLM reads: PIECES + SHARE of them, the best-scoring first. About 2 ms each on one core
# (onnx-int8, two at a time on 2 vCPU): a 600-word prompt's ~170 pieces -> 10 read, an
# 8,000-token prompt's ~2,000 -> 28.
# Measured on TOFU (bench/bench_guard.py, the trained classifiers, a paraphrase inside 300 words
# of unpunctuated filler a side, ~12 distinct pieces): with 4, 2-3 of 100 that MiniLM alone
# flags were missed, with 6 none; 8 leaves a margin (chosen on the benchmark's own forms).
PIECES = 8
SHARE = 0.01
QUANTILE = 0.005  # share of an anchor set's own forms allowed under its threshold
# A word this long is near a name one letter swapped or replaced; a shorter one only by a letter
# dropped or added: two short names one letter apart are often two names ("aisha", "aysha").
SWAP_FROM = 6
FLOOR, CEILING = 0.3, 0.6


@functools.cache
def _char_grams():
    from sklearn.feature_extraction.text import HashingVectorizer

    # No fitted vocabulary: any text maps to the same 2^18 buckets, unit norm.
    return HashingVectorizer(analyzer="char_wb", ngram_range=(3, 3), n_features=1 << 18,
                             alternate_sign=False, norm="l2")


_WORD = re.compile(r"\w+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_CAPITALISED = re.compile(r"\b[^\W\d_][\w'’-]*")  # a word starting with a letter


def uncommon(text: str, common: frozenset[str]) -> list[str]:
    """The words of `text` not in `common` (a name, a misspelling), in order."""
    return [w for w in _WORD.findall(text) if w not in common]


def names(texts: list[str], common: frozenset[str]) -> list[str]:
    """The names of `texts` (raw, before normalize()): the words they capitalise after a
    sentence's first word and never write in lower case (a title's words are also written in
    lower case elsewhere), normalised, and the uncommon words of their normalised forms; stop
    words and words under three letters left out."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    lower = {w for t in texts for w in _CAPITALISED.findall(t) if w[0].islower()}
    capitalised = [w for t in texts for sentence in _SENTENCE.split(t)
                   for w in _CAPITALISED.findall(sentence)[1:]
                   if w[0].isupper() and w.lower() not in lower]
    words = _WORD.findall(normalize(" ".join(capitalised)))
    words += [w for t in texts for w in uncommon(normalize(t), common)]
    return list(dict.fromkeys(w for w in words if len(w) >= 3 and w not in ENGLISH_STOP_WORDS))


def drops(word: str) -> set[str]:
    """`word` less one of its letters, every way."""
    return {word[:i] + word[i + 1:] for i in range(len(word))}


def char_grams(texts: list[str], common: frozenset[str]):
    """(N, 2^18) sparse unit vectors of the character 3-grams of the texts' uncommon words.
    Common words share their 3-grams with half of any text, which only made every piece near
    every anchor (and the product dense)."""
    return _char_grams().transform([" ".join(uncommon(t, common)) for t in texts])


@dataclass(frozen=True)
class Anchors:
    """Rows a piece is scored against, each with its set's threshold: static vectors and, for
    pending requests, character 3-grams."""

    static: np.ndarray  # (M, d)
    static_threshold: np.ndarray  # (M,)
    grams: Any  # (F, G) sparse, transposed for the product: column j is row j's 3-grams
    grams_threshold: np.ndarray  # (G,)
    # The pending requests' names, each less one letter (all of them; of the names of at least
    # SWAP_FROM letters). `unnamed`: a pending request has no name.
    names: frozenset[str] = frozenset()
    name_drops: frozenset[str] = frozenset()
    long_drops: frozenset[str] = frozenset()
    unnamed: bool = False

    @classmethod
    def stack(cls, static: list[tuple[np.ndarray, float]], grams: list[tuple[Any, float]],
              dim: int, names: list[list[str]] = ()) -> Anchors:
        import scipy.sparse

        every = {n for ns in names for n in ns}

        def thresholds(parts):
            return np.concatenate([np.full(r.shape[0], t, np.float32) for r, t in parts]
                                  or [np.zeros(0, np.float32)])

        return cls(np.concatenate([r for r, _ in static] or [np.zeros((0, dim), np.float32)]),
                   thresholds(static),
                   scipy.sparse.vstack([r for r, _ in grams]).T.tocsr() if grams else None,
                   thresholds(grams), frozenset(every),
                   frozenset(d for n in every for d in drops(n)),
                   frozenset(d for n in every if len(n) >= SWAP_FROM for d in drops(n)),
                   not all(names))

    def near_name(self, word: str) -> bool:
        """`word` is a name, or one letter dropped from one or added to it, or (both at least
        SWAP_FROM letters long) one letter swapped or replaced."""
        dropped = drops(word)
        return (word in self.names or word in self.name_drops or not self.names.isdisjoint(dropped)
                or (len(word) >= SWAP_FROM and not self.long_drops.isdisjoint(dropped)))

    def margins(self, static: np.ndarray, grams) -> np.ndarray:
        """(P,) each piece's best similarity to a row less that row's threshold."""
        best = np.full(len(static), -np.inf, np.float32)
        if len(self.static):
            best = (static @ self.static.T - self.static_threshold).max(axis=1)  # (P, M) -> (P,)
        if self.grams is not None:
            product = (grams @ self.grams).tocsr()  # (P, G) sparse: shared 3-grams only
            # Shifted above 0 so that the row maximum ignores the implicit zeros (no 3-gram in
            # common: never a piece's best); pieces sharing none stay at -inf.
            product.data += 2 - self.grams_threshold[product.indices]
            shifted = product.max(axis=1).toarray().ravel()  # (P,)
            best = np.maximum(best, np.where(shifted > 0, shifted - 2, -np.inf))
        return best


def read_count(pieces: int) -> int:
    """How many of a request's `pieces` MiniLM reads: a function of their number alone."""
    return min(pieces, PIECES + math.ceil(SHARE * pieces))


def leave_one_out_threshold(scores: list[np.ndarray]) -> float:
    """The threshold that lets through all but QUANTILE of the forms scored (each text's forms
    against the other texts), clipped; CEILING with nothing to score."""
    scores = np.concatenate(scores).astype(np.float64) if scores else np.zeros(0)
    if scores.size == 0:
        return CEILING
    return float(np.clip(np.quantile(scores, QUANTILE), FLOOR, CEILING))


class Screen:
    """The anchors of the pending requests and of a trained guard, and the rule above."""

    def __init__(self, static: StaticEmbedder, trained: np.ndarray | None = None,
                 trained_threshold: float = CEILING):
        self.static = static  # texts -> (N, d) unit vectors
        self.dim = static.dim
        self.common = static.words()  # words MiniLM has as one piece
        # (M, d) static vectors of the trained guard's fitting prompts and answers
        self._trained = [] if trained is None else [(trained, trained_threshold)]
        self._lock = threading.Lock()
        # key -> ((n, d) static rows of its texts, (m, 2^18) 3-grams of their forms, threshold,
        #         its names)
        self._entries: dict[str, tuple[np.ndarray, Any, float, list[str]]] = {}
        self._anchors = self._stack()  # replaced, never mutated: a read uses one snapshot

    def add(self, key: str, forms: list[list[str]], texts: list[str]) -> float:
        """Anchor the pending request `key`: `forms[i]` are its text i first, then that text's
        misspelt copies (static rows: the texts; 3-gram rows: every form), normalised; `texts`
        the raw texts, for its names. Returns its threshold."""
        flat = [f for group in forms for f in group]
        static, grams = self.static(flat), char_grams(flat, self.common)  # (n, d), (n, 2^18)
        owner = np.repeat(np.arange(len(forms)), [len(g) for g in forms])  # (n,) text of a form
        first = np.cumsum([0] + [len(g) for g in forms[:-1]])  # (t,) rows of the texts
        # Leave one text out: each form against the other texts (static) and their forms
        # (3-grams), never against its own text's.
        near = np.where(owner[:, None] == np.arange(len(forms)), -np.inf,
                        static @ static[first].T).max(axis=1)  # (n, t) -> (n,)
        shared = (grams @ grams.T).toarray()  # (n, n)
        near = np.maximum(near, np.where(owner[:, None] == owner, -np.inf, shared).max(axis=1))
        threshold = leave_one_out_threshold([near] if len(forms) > 1 else [])
        mine = names(texts, self.common)
        with self._lock:
            self._entries[key] = (static[first], grams, threshold, mine)
            self._anchors = self._stack()
        return threshold

    def keys(self) -> list[str]:
        return list(self._entries)

    def remove(self, key: str) -> None:
        with self._lock:
            if self._entries.pop(key, None) is not None:
                self._anchors = self._stack()

    def _stack(self) -> Anchors:
        entries = self._entries.values()
        return Anchors.stack(self._trained + [(s, t) for s, _, t, _ in entries],
                             [(g, t) for _, g, t, _ in entries], self.dim,
                             [w for *_, w in entries])

    def read(self, pieces: list[str]) -> np.ndarray:
        """(P,) bool: the `read_count(P)` pieces MiniLM must read."""
        if read_count(len(pieces)) == len(pieces):  # all of them (a short prompt): no scoring
            return np.ones(len(pieces), bool)
        margins = self._anchors.margins(self.static(pieces),
                                        char_grams(pieces, self.common))  # (P,)
        read = np.zeros(len(pieces), bool)
        read[np.argsort(-margins, kind="stable")[:read_count(len(pieces))]] = True
        return read

    def named(self, views: list[str]) -> np.ndarray:
        """(V,) bool: whether each view names someone a pending request names: one of its
        uncommon words is a name, or one letter away from one (dropped, added, swapped or
        replaced); True where it has no uncommon word (a name of common words: nothing to tell
        it by), and for every view while a pending request has no name. The same work for every
        view, near a pending request or not."""
        anchors = self._anchors
        tokens = [_WORD.findall(v) for v in views]  # each view's words, read once
        words = [[w for w in ts if w not in self.common and len(w) >= 3] for ts in tokens]
        # Two words together, one of them uncommon, that are a name: split in two ("fen lus")
        joined = [[a + b for a, b in zip(ts, ts[1:]) if a not in self.common or b not in
                   self.common] for ts in tokens]
        near = {w: anchors.near_name(w) for w in dict.fromkeys(w for ws in words for w in ws)}
        if anchors.unnamed:
            return np.ones(len(views), bool)
        return np.array([not ws or any(near[w] for w in ws) or not anchors.names.isdisjoint(js)
                         for ws, js in zip(words, joined)], bool)
