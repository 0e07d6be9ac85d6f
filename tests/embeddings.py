"""A model-free sentence embedding for fast tests."""

import hashlib
import re

import numpy as np


def hash_embed(texts: list[str], dim: int = 64) -> np.ndarray:
    """A bag of hashed words: similar texts get similar unit vectors, with no model to load."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % dim] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
