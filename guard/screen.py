"""The guard's first stage: which pieces of a prompt MiniLM reads.

A check reads every view of a request (views.py). The texts themselves are always embedded by
MiniLM (the router needs their vectors too). Their pieces (segments and windows: a 600-word
prompt has ~170, an 8,000-token one ~2,000) are scored here, cheaply, and MiniLM reads the
`read_count(P)` best-scoring of the P pieces: `PIECES`, plus `SHARE` of them.

Every rule that can flag a view needs it near something: a pending request's exemplars (the
exemplar rule and the window head) or the trained classifier's support (classifier.py, rule 2).
Those are the anchors. A piece's score against an anchor set is its highest cosine similarity to
one of its rows, in the static space (static.py) and, for pending requests, also in character
3-grams (a misspelt name keeps most of its 3-grams while its word pieces change), less the set's
threshold: the pieces nearest forgotten content, relative to how near its own forms come, rank
first.

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
Anchors of a pending request are kept in memory only, and dropped with its exemplars.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Callable

import numpy as np

EmbedFn = Callable[[list[str]], np.ndarray]  # texts -> (N, d) unit vectors

# Pieces MiniLM reads: PIECES + SHARE of them, the best-scoring first. About 3 ms each (onnx-int8,
# 2 vCPU): a 600-word prompt's ~170 pieces -> 6 read, an 8,000-token prompt's ~2,000 -> 24.
PIECES = 4
SHARE = 0.01
QUANTILE = 0.005  # share of an anchor set's own forms allowed under its threshold
FLOOR, CEILING = 0.3, 0.6


@functools.cache
def _char_grams():
    from sklearn.feature_extraction.text import HashingVectorizer

    # No fitted vocabulary: any text maps to the same 2^18 buckets, unit norm.
    return HashingVectorizer(analyzer="char_wb", ngram_range=(3, 3), n_features=1 << 18,
                             alternate_sign=False, norm="l2")


def char_grams(texts: list[str]):
    """(N, 2^18) sparse unit vectors of the texts' character 3-grams (within words)."""
    return _char_grams().transform(texts)


def _nearest(static: np.ndarray, grams, rows: tuple) -> np.ndarray:
    """(N,) each text's highest similarity to an anchor row, static or 3-gram."""
    static_rows, gram_rows = rows
    best = (static @ static_rows.T).max(axis=1)  # (N,)
    if gram_rows is not None:
        best = np.maximum(best, (grams @ gram_rows.T).max(axis=1).toarray().ravel())
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

    def __init__(self, static: EmbedFn, trained: np.ndarray | None = None,
                 trained_threshold: float = CEILING):
        self.static = static  # texts -> (N, d) unit vectors
        self._trained = trained  # (M, d) static vectors of the trained guard's fitting prompts
        self._trained_threshold = trained_threshold
        self._lock = threading.Lock()
        # key -> ((n, d) static rows, (n, 2^18) 3-gram rows, threshold); replaced, never mutated
        self._entries: dict[str, tuple[np.ndarray, object, float]] = {}

    def add(self, key: str, forms: list[list[str]]) -> float:
        """Anchor the pending request `key`: `forms[i]` are its text i and that text's misspelt
        copies. Returns its threshold."""
        flat = [f for group in forms for f in group]
        static, grams = self.static(flat), char_grams(flat)
        owner = np.repeat(np.arange(len(forms)), [len(g) for g in forms])  # (n,) text of a form
        scores = []
        for i in range(len(forms)):
            mine, others = owner == i, owner != i
            if others.any():
                scores.append(_nearest(static[mine], grams[mine],
                                       (static[others], grams[others])))
        threshold = leave_one_out_threshold(scores)
        with self._lock:
            self._entries = {**self._entries, key: (static, grams, threshold)}
        return threshold

    def keys(self) -> list[str]:
        return list(self._entries)

    def remove(self, key: str) -> None:
        with self._lock:
            self._entries = {k: v for k, v in self._entries.items() if k != key}

    def read(self, pieces: list[str]) -> np.ndarray:
        """(P,) bool: the `read_count(P)` pieces MiniLM must read."""
        entries, trained = self._entries, self._trained  # one snapshot for the whole call
        if not pieces:
            return np.zeros(0, bool)
        static, grams = self.static(pieces), char_grams(pieces)  # (P, d), (P, 2^18)
        margin = np.full(len(pieces), -np.inf)  # (P,) best score less its anchor set's threshold
        for rows_static, rows_grams, threshold in entries.values():
            margin = np.maximum(margin, _nearest(static, grams, (rows_static, rows_grams))
                                - threshold)
        if trained is not None and len(trained):
            margin = np.maximum(margin, _nearest(static, None, (trained, None))
                                - self._trained_threshold)
        read = np.zeros(len(pieces), bool)
        read[np.argsort(-margin, kind="stable")[:read_count(len(pieces))]] = True
        return read
