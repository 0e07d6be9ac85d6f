import numpy as np
import pytest

from adapters import synth_people
from guard import Item, SentenceEmbedder


@pytest.fixture(scope="session")
def minilm():
    return SentenceEmbedder()


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def cluster_vectors():
    """vectors(n, centre, spread, seed) -> (n, 32) unit vectors around one of 8 fixed centres."""
    centres = unit(np.random.default_rng(0).normal(size=(8, 32)))

    def vectors(n: int, centre: int, spread: float = 0.35, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return unit(centres[centre] + spread * rng.normal(size=(n, 32)) / np.sqrt(32) * 4)

    return vectors


@pytest.fixture(scope="session")
def people_items():
    """(forget, negatives): facts about 6 fictitious people vs facts about 40 others."""
    items = [Item(s.prompt, s.response) for s in synth_people(46, seed=5)]
    return items[:30], items[30:]
