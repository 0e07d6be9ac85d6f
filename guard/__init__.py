"""ECO: prompt embeddings, classifier, exemplar index, corruption, sigma tuning."""

from .embed import SentenceEmbedder

__all__ = ["SentenceEmbedder"]
