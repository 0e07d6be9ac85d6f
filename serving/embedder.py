"""The guard's embedder as the server shares it: forget submissions go before guard checks.

A guard check of a maximal-length prompt embeds hundreds of views (guard/views.py): seconds of
every core. A forget submission embeds a few texts (its exemplars) and must answer within a
second, so it does not share the cores with them: checks embed in slices of `SLICE` texts, a
submission waits for the slices in progress (at most one per check) and then embeds alone, and
no check starts a slice while a submission embeds. Checks still embed side by side.
"""

from __future__ import annotations

import threading

import numpy as np

from guard import SentenceEmbedder

# Texts per slice of a check: what a forget submission waits for at most, ~0.1 s of MiniLM
# (onnx-int8) under load here. The onnx embedders encode one text per run, so slicing changes
# no vector.
SLICE = 8

_first = threading.local()


def embed_first() -> None:
    """Mark the calling thread's embeddings as a forget submission's (a ThreadPoolExecutor's
    initializer)."""
    _first.marked = True


class SharedEmbedder:
    def __init__(self, embed: SentenceEmbedder):
        self._embed = embed
        self._turn = threading.Condition()
        self._slices = 0  # check slices embedding now
        self._first = 0  # marked calls waiting or embedding

    def __call__(self, texts: list[str]) -> np.ndarray:
        """(N, dim) float32 unit vectors, as the wrapped embedder's."""
        if getattr(_first, "marked", False):
            return self._embed_first(texts)
        if not texts:
            return self._embed(texts)
        return np.concatenate([self._slice(texts[i:i + SLICE])
                               for i in range(0, len(texts), SLICE)])

    def _embed_first(self, texts: list[str]) -> np.ndarray:
        with self._turn:
            self._first += 1
            self._turn.wait_for(lambda: not self._slices)
        try:
            return self._embed(texts)
        finally:
            with self._turn:
                self._first -= 1
                self._turn.notify_all()

    def _slice(self, texts: list[str]) -> np.ndarray:
        with self._turn:
            self._turn.wait_for(lambda: not self._first)
            self._slices += 1
        try:
            return self._embed(texts)
        finally:
            with self._turn:
                self._slices -= 1
                self._turn.notify_all()
