"""The guard as the server uses it: check prompts, add and retire exemplars, refit.

check() reads every view of a request's texts (views.py: each text, the join, sentences,
windows) and flags the request when any view is near a pending forget item's exemplar (instant,
exemplars.py) or when the calibrated classifier flags one (classifier.py). Exemplars folded into
the classifier by a refit stay covered by it after the exemplars themselves are retired. A guard
without a trained classifier (`Guard.exemplars_only`) flags by exemplars alone.

Each exemplar's threshold is calibrated when it is added, against reference negatives: texts
the guard must not flag (`set_negatives`: the server passes the training prompts that are not
being forgotten and generated general requests, general.py). The threshold lets at most 0.1% of
them through, plus `MARGIN`, within [`FLOOR`, `CEILING`]; without negatives it is the trained
model's calibrated exemplar threshold, or the configured one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .classifier import (GuardModel, load_model, prune_versions, refit, save_model,
                         versions_lock)
from .errors import GuardError
from .exemplars import ExemplarIndex
from .prompts import strip_markup
from .train import EmbedFn
from .views import views

# The threshold lets at most 0.1% of the reference negatives through, plus MARGIN for negatives
# never seen. Measured (bench/bench_guard.py, MiniLM): on TOFU, the most similar negative alone
# (a few retain questions nearly repeat forget ones) put the median threshold at 0.89 and caught
# half of the forget paraphrases; this quantile rule catches 99.5% with 0.5% of retain
# paraphrases flagged. On synthetic people (few negatives: the quantile is about the maximum)
# other owners' questions reach 0.58, "What does a herbalist do?" (the forgotten answer's word)
# 0.60, the threshold is 0.62, hostile forms of the forgotten question score 0.75 and up.
NEGATIVE_QUANTILE = 0.999
MARGIN = 0.05
FLOOR, CEILING = 0.6, 0.95  # never flag the merely topical; never demand a verbatim copy
SAME_TEXT = 0.999  # a negative this close to an exemplar is the exemplar's own text


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    rule: Literal["exemplar", "classifier"] | None  # which rule fired
    score: float  # highest classifier score among the views
    similarity: float  # highest similarity of a view to an exemplar (-1: no exemplars)
    exemplar: str | None  # the key of the exemplar entry that fired
    vectors: np.ndarray  # (N, D) embeddings of the N texts checked (not their views): routing


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
        self._negatives: dict[str, np.ndarray] = {}  # id -> (D,) reference negative
        self._negative_rows = np.zeros((0, dim), np.float32)  # (M, D) snapshot of the above

    @classmethod
    def load(cls, root: Path, embed: EmbedFn, keep_versions: int = 0) -> Guard:
        return cls(load_model(root), embed, root, keep_versions=keep_versions)

    @classmethod
    def exemplars_only(cls, embed: EmbedFn, exemplar_threshold: float) -> Guard:
        """A guard with no classifier yet: it flags prompts near pending forget items only."""
        return cls(None, embed, exemplar_threshold=exemplar_threshold)

    def check(self, texts: list[str]) -> Verdict:
        """Flag the request if any view of its texts (every message of every role, or a
        completion prompt) is about forgotten content."""
        texts = [t for t in (strip_markup(t) for t in texts) if t]
        if not texts:
            return Verdict(False, None, 0.0, -1.0, None, np.zeros((0, self.dim), np.float32))
        vectors = self.embed(views(texts))  # (V, D): the N texts first, then their pieces
        model = self.model  # one model for the whole check, even if a refit swaps it meanwhile
        if model is None:
            flags, scores = np.zeros(len(vectors), bool), np.zeros(len(vectors))
        else:
            flags, scores = model.flags(vectors)
        sims, margins, keys = self.exemplars.nearest(vectors)
        best = int(np.argmax(margins))
        if margins[best] > 0:
            rule, key = "exemplar", keys[best]
        else:
            rule, key = ("classifier" if flags.any() else None), None
        return Verdict(rule is not None, rule, float(scores.max()), float(sims.max()), key,
                       vectors[:len(texts)])

    def set_negatives(self, negatives: dict[str, np.ndarray]) -> None:
        """Reference texts the guard must not flag, as id -> (D,) embedding (replacing any set
        before); exemplars added from now on are calibrated against them."""
        self._negatives = {k: np.asarray(v, np.float32) for k, v in negatives.items()}
        self._rebuild_negatives()

    def drop_negatives(self, ids: list[str]) -> None:
        """Forget reference negatives (e.g. the embeddings of samples now forgotten)."""
        for i in ids:
            self._negatives.pop(i, None)
        self._rebuild_negatives()

    def _rebuild_negatives(self) -> None:
        rows = list(self._negatives.values())
        self._negative_rows = np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)

    def exemplar_threshold_for(self, vectors: np.ndarray) -> float:
        """The similarity above which a text is flagged as near `vectors` (n, D)."""
        negatives = self._negative_rows  # (M, D)
        if len(negatives) == 0:
            return self.model.exemplar_threshold if self.model else self.exemplar_threshold
        sims = (negatives @ vectors.T).max(axis=1)  # (M,) each negative's nearest exemplar text
        sims = sims[sims < SAME_TEXT]  # the exemplar's own texts are no negatives
        near = float(np.quantile(sims, NEGATIVE_QUANTILE)) if sims.size else FLOOR
        return min(max(near + MARGIN, FLOOR), CEILING)

    def add_exemplar(self, key: str, texts: list[str]) -> None:
        """Flag prompts near `texts` (a forget item's prompts and responses) from now on."""
        texts = [t for t in (strip_markup(t) for t in texts) if t]
        if not texts:
            raise GuardError(f"forget item {key!r} has no text to guard")
        vectors = self.embed(texts)  # (n, D)
        self.exemplars.add(key, vectors, self.exemplar_threshold_for(vectors))

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
                with versions_lock(self.root):
                    save_model(model, self.root)
                    prune_versions(self.root, self.keep_versions)
            self.model = model
            self.folded.update(keys)
            return model
