"""The guard as the server uses it: check prompts, add and retire exemplars, refit.

check() flags a prompt when it is near a pending forget item's exemplar (instant, exemplars.py)
or when the calibrated classifier flags it (classifier.py). Exemplars folded into the classifier
by a refit stay covered by it after the exemplars themselves are retired. A guard without a
trained classifier (`Guard.exemplars_only`) flags by exemplars alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .classifier import GuardModel, load_model, prune_versions, refit, save_model
from .errors import GuardError
from .exemplars import ExemplarIndex
from .prompts import strip_markup
from .train import EmbedFn


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    rule: Literal["exemplar", "classifier"] | None  # which rule fired
    score: float  # highest classifier score among the texts
    similarity: float  # highest similarity to an exemplar (-1: no exemplars)
    exemplar: str | None  # the key of the exemplar entry that fired
    vectors: np.ndarray  # (N, D) embeddings of the checked texts, for reuse (routing)


class Guard:
    def __init__(self, model: GuardModel | None, embed: EmbedFn, root: Path | None = None,
                 exemplar_threshold: float | None = None, keep_versions: int = 0):
        dim = embed(["dimension probe"]).shape[1]
        if model is not None and dim != model.support.shape[1]:
            raise GuardError(f"the embedder gives {dim}-dim vectors; this guard was trained on "
                             f"{model.support.shape[1]}-dim ones ({model.manifest.get('embedder')})")
        if model is None and exemplar_threshold is None:
            raise GuardError("a guard without a classifier needs an exemplar threshold")
        self.model = model
        self.dim = dim
        self.exemplar_threshold = exemplar_threshold  # used while there is no classifier
        self.embed = embed
        self.root = Path(root) if root else None
        self.keep_versions = keep_versions  # superseded classifier versions kept by a refit
        self.exemplars = ExemplarIndex(dim)
        self.folded: set[str] = set()  # exemplar keys the classifier has been refitted on
        self._refit_lock = threading.Lock()

    @classmethod
    def load(cls, root: Path, embed: EmbedFn, keep_versions: int = 0) -> Guard:
        return cls(load_model(root), embed, root, keep_versions=keep_versions)

    @classmethod
    def exemplars_only(cls, embed: EmbedFn, exemplar_threshold: float) -> Guard:
        """A guard with no classifier yet: it flags prompts near pending forget items only."""
        return cls(None, embed, exemplar_threshold=exemplar_threshold)

    def check(self, texts: list[str]) -> Verdict:
        """Flag the request if any of its texts (e.g. user messages) is about forgotten content."""
        texts = [t for t in (strip_markup(t) for t in texts) if t]
        if not texts:
            return Verdict(False, None, 0.0, -1.0, None, np.zeros((0, self.dim), np.float32))
        vectors = self.embed(texts)  # (N, D)
        model = self.model  # one model for the whole check, even if a refit swaps it meanwhile
        if model is None:
            flags, scores = np.zeros(len(texts), bool), np.zeros(len(texts))
        else:
            flags, scores = model.flags(vectors)
        sims, keys = self.exemplars.nearest(vectors)
        best = int(np.argmax(sims))
        if sims[best] > (model.exemplar_threshold if model else self.exemplar_threshold):
            rule, key = "exemplar", keys[best]
        else:
            rule, key = ("classifier" if flags.any() else None), None
        return Verdict(rule is not None, rule, float(scores.max()), float(sims.max()), key, vectors)

    def add_exemplar(self, key: str, texts: list[str]) -> None:
        """Flag prompts near `texts` (a forget item's prompts and responses) from now on."""
        texts = [t for t in (strip_markup(t) for t in texts) if t]
        if not texts:
            raise GuardError(f"forget item {key!r} has no text to guard")
        self.exemplars.add(key, self.embed(texts))

    def retire_exemplar(self, key: str) -> bool:
        return self.exemplars.remove(key)

    def refit(self) -> GuardModel:
        """Fit the classifier again with every exemplar not yet folded in; swap it in atomically
        (and save it as the new current version when the guard has a folder, deleting all but
        `keep_versions` superseded ones)."""
        if self.model is None:
            raise GuardError("this guard has no classifier to refit (train one with "
                             "`lethe guard train`)")
        with self._refit_lock:
            keys = [k for k in self.exemplars.keys() if k not in self.folded]
            entries = [e for e in (self.exemplars.get(k) for k in keys) if e is not None]  # (n, D) each
            if not entries:
                return self.model
            model = refit(self.model, np.concatenate(entries))
            if self.root is not None:
                save_model(model, self.root)
                prune_versions(self.root, self.keep_versions)
            self.model = model
            self.folded.update(keys)
            return model
