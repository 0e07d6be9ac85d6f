"""Search files for stored embeddings: does any file under a folder hold a vector close to one
of the given ones, as float32 at any byte alignment (raw arrays, .npz, database pages)?

    nearest_stored(root, vectors, skip) -> (highest cosine found, the file holding it)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve


def _best_in(data: bytes, vectors: np.ndarray) -> float:
    """Highest cosine between a row of `vectors` (k, D) unit vectors and any D consecutive
    float32 values of `data`, at each of the 4 byte alignments."""
    k, dim = vectors.shape
    best = -1.0
    for offset in range(4):
        usable = (len(data) - offset) // 4 * 4
        if usable < dim * 4:
            continue
        with np.errstate(invalid="ignore"):  # signalling NaNs among the bytes
            values = np.frombuffer(data, np.float32, usable // 4, offset).astype(np.float64)
        values[~np.isfinite(values) | (np.abs(values) > 1e3)] = 0.0  # not parts of unit vectors
        squares = np.concatenate([[0.0], np.cumsum(values ** 2)])
        norms = np.sqrt(np.maximum(squares[dim:] - squares[:-dim], 1e-12))  # (N - D + 1,)
        for v in vectors:
            dots = fftconvolve(values, v[::-1], mode="valid")  # (N - D + 1,) sliding dot
            best = max(best, float((dots / norms)[norms > 1e-3].max(initial=-1.0)))
    return best


def nearest_stored(root: Path, vectors: np.ndarray, skip: tuple[str, ...] = ()
                   ) -> tuple[float, Path | None]:
    """The highest cosine similarity of any stored float32 run under `root` to `vectors`
    (k, D), and the file; folders named in `skip` (relative to root) are not read."""
    best, where = -1.0, None
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(path.is_relative_to(root / s) for s in skip):
            continue
        score = _best_in(path.read_bytes(), np.asarray(vectors, np.float64))
        if score > best:
            best, where = score, path
    return best, where
