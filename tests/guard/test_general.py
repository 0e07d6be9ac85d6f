"""The general requests' vectors are embedded once per embedder and kept in its cache folder;
a kept file that no longer matches the embedder, or is damaged, is embedded again."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from guard import general_prompts, general_vectors

TEXTS = [p for prompts in general_prompts().values() for p in prompts]


class CountingEmbedder:
    """SentenceEmbedder's two methods that general_vectors uses; vectors from each text's hash
    (plus `shift`: another runtime's rounding), and a count of the texts it embedded."""

    def __init__(self, cache: Path, shift: float = 0.0):
        self.cache, self.shift, self.embedded = cache, shift, 0

    def derived(self, name: str) -> Path:
        return self.cache / f"stub-{name}"

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.embedded += len(texts)
        seeds = [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) for t in texts]
        return np.stack([np.random.default_rng(s).normal(size=8) + self.shift
                         for s in seeds]).astype(np.float32)  # (N, 8)


def test_general_vectors_are_embedded_once_and_kept(tmp_path):
    first = CountingEmbedder(tmp_path)
    vectors = general_vectors(first)
    assert list(vectors) == [f"general-{i}" for i in range(len(TEXTS))]
    assert np.array_equal(np.stack(list(vectors.values())), first(TEXTS))
    [kept] = tmp_path.iterdir()

    again = CountingEmbedder(tmp_path)
    read = general_vectors(again)
    assert again.embedded == 1  # the probe alone
    assert all(np.array_equal(read[k], vectors[k]) for k in vectors)
    assert [p.name for p in tmp_path.iterdir()] == [kept.name]  # nothing else written


def test_a_kept_file_that_differs_or_is_damaged_is_embedded_again(tmp_path):
    general_vectors(CountingEmbedder(tmp_path))
    [kept] = tmp_path.iterdir()

    other = CountingEmbedder(tmp_path, shift=0.01)  # its probe differs from the kept row
    vectors = general_vectors(other)
    assert other.embedded == 1 + len(TEXTS)
    assert np.array_equal(np.stack(list(vectors.values())), other(TEXTS))

    for damage in (b"", b"not an array", kept.read_bytes()[:200]):
        kept.write_bytes(damage)
        fresh = CountingEmbedder(tmp_path, shift=0.01)
        assert np.array_equal(np.stack(list(general_vectors(fresh).values())), other(TEXTS))
        assert fresh.embedded == 1 + len(TEXTS)
    assert [p.name for p in tmp_path.iterdir()] == [kept.name]


def test_a_cache_folder_it_cannot_write_costs_time_not_the_start(tmp_path, caplog):
    blocked = tmp_path / "a-file"  # where the cache folder should be: no folder can go there
    blocked.write_text("")
    embedder = CountingEmbedder(blocked / "cache")
    for _ in range(2):  # embedded each time, and served each time
        vectors = general_vectors(embedder)
        assert np.array_equal(np.stack(list(vectors.values())), CountingEmbedder(tmp_path)(TEXTS))
    assert embedder.embedded == 2 * (1 + len(TEXTS))
    assert "could not be kept" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]
