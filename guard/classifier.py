"""The guard's classifier: forget prompts vs everything else, on sentence embeddings.

A prompt is flagged by the classifier rule when
  1. the classifier's score passes a threshold calibrated on held-out negatives to a target
     false-positive rate (not hand-set, unlike ECO's 0.99..0.9999), and
  2. the prompt lies in the neighbourhood of the forget set: its cosine similarity to the nearest
     training positive ("support") is at least the lowest one seen on held-out positives.
Rule 2 exists because a classifier trained on forget vs retain data extrapolates arbitrarily far
from both: on TOFU it flagged 12% of real-author questions, which the neighbourhood gate cuts to ~1%.

The same calibration gives the exemplar threshold: the similarity to a forget item above which a
prompt is flagged on sight (exemplars.py), chosen so that the same share of held-out negatives pass.

Classifiers are scikit-learn estimators chosen by name; add one with `register_classifier`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from base import MANIFEST, Registry, VersionedDir, sha256_file

from .errors import GuardError, GuardNameError

ClassifierFactory = Callable[[int], Any]  # seed -> an unfitted scikit-learn classifier

CLASSIFIERS: Registry[ClassifierFactory] = Registry("classifier", GuardNameError)
register_classifier = CLASSIFIERS.register
classifier_names = CLASSIFIERS.names


def _mlp(seed: int):
    from sklearn.neural_network import MLPClassifier

    # One hidden layer of 256: on TOFU (forget10 vs retain90) TPR 0.988 at FPR ~1%, where
    # logistic regression reached 0.94 at the same FPR (bench/bench_guard.py).
    return MLPClassifier((256,), alpha=1e-3, max_iter=500, random_state=seed)


def _logreg(seed: int):
    from sklearn.linear_model import LogisticRegression

    # Weak regularisation: the classes are many small clusters (one per person), not two blobs.
    return LogisticRegression(C=100.0, max_iter=5000, random_state=seed)


register_classifier("mlp", _mlp)
register_classifier("logreg", _logreg)


def threshold_at_fpr(negative_scores: np.ndarray, target_fpr: float) -> float:
    """The smallest threshold t with at most floor(target_fpr * n) negatives scoring above t."""
    if len(negative_scores) == 0:
        raise GuardError("no held-out negatives to calibrate the threshold on")
    allowed = int(np.floor(target_fpr * len(negative_scores)))
    return float(np.sort(negative_scores)[::-1][min(allowed, len(negative_scores) - 1)])


def max_similarity(vectors: np.ndarray, support: np.ndarray) -> np.ndarray:
    """(N,) cosine similarity of each unit vector (N, D) to its nearest row of support (M, D)."""
    if len(support) == 0:
        return np.full(len(vectors), -1.0, dtype=np.float32)
    return (vectors @ support.T).max(axis=1)  # (N, M) -> (N,)


@dataclass
class GuardModel:
    """A fitted, calibrated classifier with the vectors it was fitted and calibrated on."""

    kind: str
    estimator: Any
    threshold: float  # classifier score above which a prompt may be flagged
    support_floor: float  # ... if its similarity to the support is at least this
    exemplar_threshold: float  # similarity to an exemplar above which a prompt is flagged
    target_fpr: float
    seed: int
    # Fit and calibration vectors (embeddings only, never text): fit_pos is the support.
    vectors: dict[str, np.ndarray]
    manifest: dict = field(default_factory=dict)

    @property
    def support(self) -> np.ndarray:
        return self.vectors["fit_pos"]

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """(N,) probability of the forget class for (N, D) unit vectors."""
        return self.estimator.predict_proba(vectors)[:, 1]

    def flags(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flagged (N,) bool, score (N,)) under the classifier rule."""
        scores = self.scores(vectors)
        near = max_similarity(vectors, self.support) >= self.support_floor
        return (scores > self.threshold) & near, scores

    def rates(self, positives: np.ndarray, negatives: np.ndarray) -> dict:
        """True- and false-positive rates of the classifier rule on (N, D) vectors."""
        return {"tpr": float(self.flags(positives)[0].mean()) if len(positives) else None,
                "fpr": float(self.flags(negatives)[0].mean()) if len(negatives) else None,
                "n_positives": len(positives), "n_negatives": len(negatives)}


def fit_estimator(positives: np.ndarray, negatives: np.ndarray, *, kind: str, seed: int):
    """The classifier `kind` fitted on (P, D) positives vs (N, D) negatives, classes weighted to
    balance (forget sets are small)."""
    from sklearn.utils.class_weight import compute_sample_weight

    x = np.concatenate([positives, negatives])  # (P + N, D)
    y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
    estimator = CLASSIFIERS.get(kind)(seed)
    estimator.fit(x, y, sample_weight=compute_sample_weight("balanced", y))
    return estimator


def fit_guard(vectors: dict[str, np.ndarray], *, kind: str, target_fpr: float, seed: int,
              support_floor: float | None = None) -> GuardModel:
    """Fit on vectors['fit_pos'] vs ['fit_neg'], calibrate on ['cal_pos'] and ['cal_neg'].

    All (N, D) unit vectors (fit_estimator). `support_floor`: the neighbourhood gate's
    similarity, when not calibrated on ['cal_pos'].
    """
    CLASSIFIERS.get(kind)  # an unknown name is named before the data is checked
    for name in ("fit_pos", "fit_neg", "cal_pos", "cal_neg"):
        if len(vectors.get(name, ())) == 0:
            raise GuardError(f"no {name.replace('_', ' ')} vectors: need forget and negative "
                             "prompts for both fitting and calibration")
    estimator = fit_estimator(vectors["fit_pos"], vectors["fit_neg"], kind=kind, seed=seed)
    model = GuardModel(kind=kind, estimator=estimator, threshold=0.0, support_floor=0.0,
                       exemplar_threshold=0.0, target_fpr=target_fpr, seed=seed, vectors=vectors)
    model.threshold = threshold_at_fpr(model.scores(vectors["cal_neg"]), target_fpr)
    model.support_floor = (float(max_similarity(vectors["cal_pos"], model.support).min())
                           if support_floor is None else support_floor)
    model.exemplar_threshold = threshold_at_fpr(
        max_similarity(vectors["cal_neg"], model.support), target_fpr)
    return model


# --- on disk: a base.VersionedDir: <root>/<version>/{classifier.joblib, vectors.npz,
# manifest.json}, <root>/CURRENT


def save_model(model: GuardModel, root: Path) -> str:
    """Write `model` as a new version folder and point CURRENT at it; returns the version.

    Written to a staging folder, fsynced, renamed, then CURRENT is replaced: a crash leaves the
    previous version current, never a half-written one.
    """
    import joblib
    import sklearn

    versions = VersionedDir(root)
    with versions.staging.folder() as staging:
        joblib.dump(model.estimator, staging / "classifier.joblib")
        np.savez(staging / "vectors.npz", **model.vectors)
        files = {name: sha256_file(staging / name) for name in ("classifier.joblib", "vectors.npz")}
        version = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
        model.manifest = dict(
            model.manifest, version=version, kind=model.kind, threshold=model.threshold,
            support_floor=model.support_floor, exemplar_threshold=model.exemplar_threshold,
            target_fpr=model.target_fpr, seed=model.seed, files=files,
            sizes={k: len(v) for k, v in model.vectors.items()},
            versions={"scikit-learn": sklearn.__version__, "numpy": np.__version__},
            created_at=time.time())
        # The same fit again is the same version (content-addressed): kept as it is.
        versions.store(staging, version, model.manifest)
    versions.publish(version)
    return version


def trained_version(root: Path) -> str | None:
    """The version CURRENT names under root (a hash of its files); None: no trained guard."""
    return VersionedDir.pointer(root)


def load_model(root: Path) -> GuardModel:
    """The current version under root; its files must match the hashes in its manifest."""
    import joblib

    root = Path(root)
    untrained = f"no trained guard at {root} (train one with `lethe guard train`)"
    try:
        version = trained_version(root)
        if version is None:
            raise GuardError(untrained)
        folder = root / version
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GuardError(f"{untrained}: {e}") from e
    for name, digest in manifest["files"].items():
        if sha256_file(folder / name) != digest:
            raise GuardError(f"{folder / name} does not match its manifest hash: refusing to load")
    with np.load(folder / "vectors.npz") as data:
        vectors = {k: data[k] for k in data.files}
    return GuardModel(kind=manifest["kind"], estimator=joblib.load(folder / "classifier.joblib"),
                      threshold=manifest["threshold"], support_floor=manifest["support_floor"],
                      exemplar_threshold=manifest["exemplar_threshold"],
                      target_fpr=manifest["target_fpr"], seed=manifest["seed"], vectors=vectors,
                      manifest=manifest)
