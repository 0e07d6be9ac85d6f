"""The guard as the server uses it: check prompts, add and retire the exemplars of pending
forget requests.

check() reads every view of a request's texts (views.py: each text normalised, the join,
segments, windows): MiniLM embeds the texts and the pieces that the first stage picks (screen.py:
a number fixed by how many there are, the nearest to forgotten content first), and the request
is flagged when one of those
  - is near a pending forget request's exemplar (instant: exemplars.py), or
  - is flagged by the window head: a classifier fitted, in the background, on the exemplars of
    the pending requests against the reference negatives (it catches forms the exemplar rule
    misses, such as heavy typos; ready seconds after a request is added), where the view names
    someone a pending request names (screen.py, `named`), or
  - is flagged by the trained classifier (`lethe guard train`, classifier.py), if there is one.

Exemplars hold a request's texts and generated hostile forms (augment.py: typos) as vectors,
never text. When a request is exact, its exemplars go, and so does every head fitted on them:
the next head is fitted on the requests still pending, the one that fitting on them alone gives.
Nothing derived from a request is ever written to disk by the guard.

Each exemplar's threshold is calibrated when it is added, against reference negatives: texts
the guard must not flag (`set_negatives`: the server passes the training prompts that are not
being forgotten and generated general requests, general.py). The threshold lets at most 0.1% of
them through, plus `MARGIN`, within [`FLOOR`, `CEILING`]; without negatives it is the trained
model's calibrated exemplar threshold, or the configured one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .augment import exemplar_forms
from .classifier import (GuardModel, fit_estimator, fit_guard, load_model, max_similarity,
                         threshold_at_fpr)
from .errors import GuardError
from .exemplars import ExemplarIndex, Nearest
from .normalize import load as load_normalize
from .normalize import normalize
from .prompts import strip_markup
from .screen import Screen
from .static import StaticEmbedder
from .train import EmbedFn
from .views import views

log = logging.getLogger("lethe.guard")

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
# The window head flags a view only this near a pending request's exemplar rows: a classifier
# fitted on a few people extrapolates far from them (classifier.py, rule 2); the exemplar rule's
# own floor, so the head reaches past the exemplar threshold but never into the merely topical.
HEAD_SUPPORT = FLOOR
# ... and only when it takes the view for a positive. Measured on synthetic people (12 owners, 3
# facts each, one forgotten; logreg): the misspelt forms only it catches score 0.87-0.97; with
# a threshold from its fitted-on negatives alone, another owner's question of the same shape
# (0.02 with the mlp) was flagged.
HEAD_MIN_SCORE = 0.5
# Folds of the near negatives for the head's threshold. Measured on TOFU (bench/bench_guard.py
# --part window, forget10 pending, 400 retain paraphrases): calibrated on the negatives it was
# fitted on, the head flagged 3 the exemplar rule did not (FPR 0.0125 in all); held out, 2
# (0.010), its typo forms 0.93 -> 0.92 flagged. Five fits more per head.
HEAD_FOLDS = 5
# A view an exemplar flags is about every pending request whose threshold it passes, and every
# one with an exemplar row within this of its most similar row (forget.quarantine: matched skips
# their shards). Not every request within HEAD_SUPPORT: other owners' questions of the same
# shape reach it (synthetic people), so every request would be named. Nearness alone is not
# enough either: on TOFU (forget10 pending, typo forms, bench/bench_guard_tofu.py) the nearest
# request of a view only the head flagged was another author's for 4 of its 31 flags (the
# author's own 0.017-0.048 below), so such a view names no request (every held shard skipped).
NAMED_WITHIN = 0.1


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    rule: Literal["exemplar", "head", "classifier"] | None  # which rule fired
    score: float  # highest classifier score among the views (trained classifier, else head)
    similarity: float  # highest similarity of a view to an exemplar (-1: no exemplars)
    exemplar: str | None  # the key of the exemplar entry that fired
    vectors: np.ndarray  # (N, D) embeddings of the N texts checked (not their views): routing
    # The pending requests the prompt is about (its views that an exemplar flags: NAMED_WITHIN);
    # None when the guard cannot tell: a view that only the window head or the trained
    # classifier flags.
    requests: frozenset[str] | None = None
    # The pending requests whose exemplars the guard held for this check and that the prompt is
    # known not to be about: forget.quarantine matched lets their shards answer it. Empty when
    # `requests` is None. A request the guard holds no exemplars of is never among them.
    unrelated: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Head:
    model: GuardModel
    keys: frozenset[str]  # the pending requests it was fitted on


class Guard:
    def __init__(self, model: GuardModel | None, embed: EmbedFn, *,
                 static: StaticEmbedder | None = None,
                 exemplar_threshold: float | None = None,
                 kind: str = "logreg", target_fpr: float = 0.01, seed: int = 0):
        """`static`: the static embedder (static.py) of the first stage (screen.py); None, or a
        trained classifier saved without static anchors: MiniLM reads every piece."""
        dim = embed(["dimension probe"]).shape[1]
        load_normalize()
        if model is not None and dim != model.support.shape[1]:
            raise GuardError(f"the embedder gives {dim}-dim vectors; this guard was trained on "
                             f"{model.support.shape[1]}-dim ones ({model.manifest.get('embedder')})")
        if model is None and exemplar_threshold is None:
            raise GuardError("a guard without a classifier needs an exemplar threshold")
        self.model = model  # the trained classifier; never refitted here
        self.dim = dim
        self.screen = _screen(model, static)
        self.exemplar_threshold = exemplar_threshold  # used while there is no classifier
        self.embed = embed
        self.kind, self.target_fpr, self.seed = kind, target_fpr, seed  # the head's fit
        self.exemplars = ExemplarIndex(dim)
        self._negatives: dict[str, np.ndarray] = {}  # id -> (D,) reference negative
        self._negative_rows = np.zeros((0, dim), np.float32)  # (M, D) the above, less covered
        self._covers: dict[str, list[str]] = {}  # pending key -> negative ids it forgets
        # The head: fitted by a background thread whenever the pending set changes.
        self._head: _Head | None = None
        self._changes = threading.Condition()
        self._wanted = 0  # bumped by every change of the pending set
        self._fitted = 0  # the change the head (or its absence) reflects
        self._fitter: threading.Thread | None = None

    @classmethod
    def load(cls, root: Path, embed: EmbedFn, **head) -> Guard:
        return cls(load_model(root), embed, **head)

    @classmethod
    def exemplars_only(cls, embed: EmbedFn, exemplar_threshold: float, **head) -> Guard:
        """A guard with no trained classifier: it flags prompts near pending forget items, by
        their exemplars and the window head."""
        return cls(None, embed, exemplar_threshold=exemplar_threshold, **head)

    # --- checking ----------------------------------------------------------------------------

    def check(self, texts: list[str]) -> Verdict:
        """Flag the request if any view of its texts (every message of every role, or a
        completion prompt) is about forgotten content."""
        texts = [t for t in (strip_markup(t) for t in texts) if t]
        if not texts:
            return Verdict(False, None, 0.0, -1.0, None, np.zeros((0, self.dim), np.float32))
        every = views(texts)  # the N texts first, then their pieces
        pieces = every[len(texts):]
        if self.screen is not None:  # MiniLM reads the pieces that the first stage picks
            pieces = [p for p, read in zip(pieces, self.screen.read(pieces)) if read]
        read = every[:len(texts)] + pieces
        vectors = self.embed(read)  # (N + P, D)
        model, head = self.model, self._head  # one of each for the whole check
        near = self.exemplars.nearest(vectors, NAMED_WITHIN)
        best = int(np.argmax(near.margin))
        scores = np.zeros(1)
        rule, key = None, None
        if near.margin[best] > 0:
            rule, key = "exemplar", near.key[best]
        unexplained = np.zeros(len(vectors), bool)  # (N + P,) flagged, not by an exemplar
        if head is not None:
            flags, scores = head.model.flags(vectors)
            if self.screen is not None:  # fitted on a few people, it takes anyone for them
                flags &= self.screen.named(read)
            rule = rule or ("head" if flags.any() else None)
            unexplained |= flags & (near.margin <= 0)
        if model is not None:
            flags, scores = model.flags(vectors)
            rule = rule or ("classifier" if flags.any() else None)
            unexplained |= flags & (near.margin <= 0)
        return Verdict(rule is not None, rule, float(scores.max()), float(near.similarity.max()),
                       key, vectors[:len(texts)], *_attribution(near, unexplained))

    # --- reference negatives -----------------------------------------------------------------

    def set_negatives(self, negatives: dict[str, np.ndarray]) -> None:
        """Reference texts the guard must not flag, as id -> (D,) embedding (replacing any set
        before); exemplars added from now on are calibrated against them, and the head is
        fitted against them."""
        with self._changes:
            self._negatives = {k: np.asarray(v, np.float32) for k, v in negatives.items()}
            self._rebuild_negatives()

    def _rebuild_negatives(self) -> None:
        covered = {i for ids in self._covers.values() for i in ids}
        rows = [v for k, v in sorted(self._negatives.items()) if k not in covered]
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

    # --- pending requests --------------------------------------------------------------------

    def add_exemplar(self, key: str, texts: list[str], covers: list[str] = ()) -> None:
        """Flag prompts near `texts` (a forget request's prompts and responses) and their hostile
        forms from now on; `covers` are the ids of the reference negatives the request forgets
        (no longer negatives: they are what must be flagged; set aside even when the request has
        no text left, so that retiring it drops them)."""
        with self._changes:  # first: a request with no text left still forgets its samples
            self._covers[key] = list(covers)
            self._rebuild_negatives()
        raw = [t for t in (strip_markup(t) for t in texts) if t]
        texts = [t for t in (normalize(t) for t in raw) if t]
        if not texts:
            raise GuardError(f"forget item {key!r} has no text to guard")
        forms = [exemplar_forms([t]) for t in texts]  # text i and its misspelt copies
        vectors = self.embed(list(dict.fromkeys(f for group in forms for f in group)))  # (n, D)
        if self.screen is not None:  # first: a piece near the request is read from now on
            self.screen.add(key, forms, raw)
        self.exemplars.add(key, vectors, self.exemplar_threshold_for(vectors))
        self._changed()

    def retire_exemplar(self, key: str) -> bool:
        """The request is exact: drop its exemplars, the negatives it forgot, and the head if it
        was fitted on them (a new one is fitted without them). False if there was no entry."""
        found = self.exemplars.remove(key)
        if self.screen is not None:
            self.screen.remove(key)
        with self._changes:
            for i in self._covers.pop(key, ()):
                self._negatives.pop(i, None)
            self._rebuild_negatives()
            if self._head is not None and key in self._head.keys:
                self._head = None
        self._changed()
        return found

    @property
    def head(self) -> GuardModel | None:
        head = self._head
        return None if head is None else head.model

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until the head reflects the pending requests as they are now; False on time-out."""
        with self._changes:
            wanted = self._wanted
            return self._changes.wait_for(lambda: self._fitted >= wanted, timeout)

    def _changed(self) -> None:
        with self._changes:
            self._wanted += 1
            if self._fitter is None:
                self._fitter = threading.Thread(target=self._fit_forever, name="guard-head",
                                                daemon=True)
                self._fitter.start()
            self._changes.notify_all()

    def _fit_forever(self) -> None:
        while True:
            with self._changes:
                self._changes.wait_for(lambda: self._fitted < self._wanted)
                wanted = self._wanted
                keys = sorted(self.exemplars.keys())
                positives = [self.exemplars.get(k) for k in keys]
                negatives = self._negative_rows
            head = None
            if keys and len(negatives) >= 2 and all(p is not None for p in positives):
                try:
                    head = _Head(fit_head(np.concatenate(positives), negatives, kind=self.kind,
                                          target_fpr=self.target_fpr, seed=self.seed),
                                 frozenset(keys))
                except GuardError:  # the exemplar rule still acts; the next change tries again
                    log.exception("the guard's window head could not be fitted")
            with self._changes:
                if head is None or head.keys <= set(self.exemplars.keys()):
                    self._head = head  # never one fitted on a request retired meanwhile
                self._fitted = wanted
                self._changes.notify_all()


def _attribution(near: Nearest, unexplained: np.ndarray
                 ) -> tuple[frozenset[str] | None, frozenset[str]]:
    """(the pending requests the views are about, those they are not about) as a Verdict holds
    them; (None, {}) where a flagged view (`unexplained`, (N,)) names none."""
    if unexplained.any():
        return None, frozenset()
    return near.about, near.keys - near.about


def _screen(model: GuardModel | None, static: StaticEmbedder | None) -> Screen | None:
    """The first stage over the pending requests' anchors and, with a trained classifier, the
    static vectors of its fitting prompts; None where it cannot screen for every rule."""
    if static is None:
        return None
    if model is None:
        return Screen(static)
    anchors = model.vectors.get("static_pos")
    if anchors is None:  # trained without them: MiniLM reads every piece, as it was
        return None
    if anchors.shape[1] != static.dim:
        raise GuardError(f"the static embedder gives {static.dim}-dim vectors; this guard's "
                         f"anchors are {anchors.shape[1]}-dim (train it again with `lethe guard "
                         "train`)")
    return Screen(static, anchors, model.manifest["screen"]["threshold"])


def fit_head(positives: np.ndarray, negatives: np.ndarray, *, kind: str, target_fpr: float,
             seed: int) -> GuardModel:
    """A classifier of pending requests' exemplar rows `positives` (P, D) against the reference
    negatives (M, D), fitted on all of both. It flags a view within HEAD_SUPPORT of a positive
    whose score passes a threshold calibrated at `target_fpr` on the negatives that near (the
    only ones it could flag), each scored by a fit that held it out (HEAD_FOLDS): the reference
    negatives are what must not be flagged (other owners asked the same way), and a fit scores
    the rows it was fitted on too low to calibrate on. Never below HEAD_MIN_SCORE.
    Deterministic: the same rows give the same bytes."""
    near = np.flatnonzero(max_similarity(negatives, positives) >= HEAD_SUPPORT)  # (K,)
    model = fit_guard({"fit_pos": positives, "fit_neg": negatives, "cal_pos": positives,
                       "cal_neg": negatives},
                      kind=kind, target_fpr=target_fpr, seed=seed, support_floor=HEAD_SUPPORT)
    folds = [near[i::HEAD_FOLDS] for i in range(min(HEAD_FOLDS, len(near)))]
    held_out = [  # each near negative, scored by the fit without its fold
        fit_estimator(positives, np.delete(negatives, fold, axis=0), kind=kind, seed=seed)
        .predict_proba(negatives[fold])[:, 1] for fold in folds]
    if not all(np.isfinite(s).all() for s in [model.scores(positives[:1]), *held_out]):
        raise GuardError("the window head's scores are not finite")
    if held_out:  # else none is near enough to be flagged: fit_guard's, on all of them
        model.threshold = threshold_at_fpr(np.concatenate(held_out), target_fpr)
    model.threshold = max(model.threshold, HEAD_MIN_SCORE)
    return model
