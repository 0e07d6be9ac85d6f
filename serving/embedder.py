"""The guard's embedder as the server shares it between chats' guard checks and forget
submissions.

A guard check of a long prompt embeds hundreds of views (guard/views.py), and the embedder
encodes one call at a time: as one call, a check would keep a forget submission (which embeds
its new exemplar) waiting for seconds. So calls are cut into slices of `SLICE` texts, and the
slices of threads marked by `embed_first` (the forget submissions') go before any other's next
slice: a submission waits for at most one slice, however many checks are in flight.
"""

from __future__ import annotations

import threading

import numpy as np

from guard import SentenceEmbedder

# Texts per slice: ~20-40 ms of MiniLM (onnx-int8) here, the most a forget submission waits for
# the embedder. The onnx embedders encode one text per run, so slicing changes no vector.
SLICE = 8

_marked = threading.local()


def embed_first() -> None:
    """Mark the calling thread: its slices go before other threads' (a ThreadPoolExecutor's
    initializer)."""
    _marked.first = True


class SharedEmbedder:
    def __init__(self, embed: SentenceEmbedder):
        self._embed = embed
        self._turn = threading.Condition()
        self._busy = False
        self._first_waiting = 0  # marked threads waiting for a turn

    def __call__(self, texts: list[str]) -> np.ndarray:
        """(N, dim) float32 unit vectors, as the wrapped embedder's."""
        if not texts:
            return self._embed(texts)
        return np.concatenate([self._slice(texts[i:i + SLICE])
                               for i in range(0, len(texts), SLICE)])

    def _slice(self, texts: list[str]) -> np.ndarray:
        first = getattr(_marked, "first", False)
        with self._turn:
            self._first_waiting += first
            self._turn.wait_for(lambda: not self._busy and (first or not self._first_waiting))
            self._first_waiting -= first
            self._busy = True
        try:
            return self._embed(texts)
        finally:
            with self._turn:
                self._busy = False
                self._turn.notify_all()
