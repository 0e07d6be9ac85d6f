"""The classifier is calibrated on held-out negatives to the configured false-positive rate."""

import numpy as np
import pytest

from guard import GuardError, load_model, register_classifier, save_model
from guard.classifier import fit_guard, threshold_at_fpr


def test_threshold_lets_at_most_the_target_share_of_negatives_pass():
    scores = np.linspace(0, 1, 200)
    for fpr in (0.01, 0.05, 0.2):
        threshold = threshold_at_fpr(scores, fpr)
        assert (scores > threshold).sum() == int(fpr * 200)


@pytest.mark.parametrize("kind", ["mlp", "logreg"])
def test_calibration_meets_the_configured_fpr_on_fresh_negatives(kind, cluster_vectors):
    # Positives around centre 0; negatives around centres 1..7, one of them (1) overlapping 0.
    negatives = lambda n, seed: np.concatenate(  # noqa: E731
        [cluster_vectors(n, c, seed=seed + c) for c in range(1, 8)])
    vectors = {"fit_pos": cluster_vectors(100, 0, seed=1), "fit_neg": negatives(100, 10),
               "cal_pos": cluster_vectors(50, 0, seed=2), "cal_neg": negatives(400, 20)}
    model = fit_guard(vectors, kind=kind, target_fpr=0.05, seed=0)
    flagged_cal = model.flags(vectors["cal_neg"])[0].mean()
    fresh = model.rates(cluster_vectors(500, 0, seed=3), negatives(500, 30))
    assert flagged_cal <= 0.05
    # 2800 calibration and 3500 fresh negatives: the sampling error of each rate is ~0.4%.
    assert fresh["fpr"] <= 0.05 + 0.015
    assert fresh["tpr"] >= 0.9


def test_saved_guard_loads_with_the_same_scores_and_refuses_tampered_files(tmp_path,
                                                                           cluster_vectors):
    vectors = {"fit_pos": cluster_vectors(40, 0, seed=1), "fit_neg": cluster_vectors(40, 2, seed=2),
               "cal_pos": cluster_vectors(20, 0, seed=3), "cal_neg": cluster_vectors(20, 2, seed=4)}
    model = fit_guard(vectors, kind="logreg", target_fpr=0.05, seed=0)
    version = save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    probe = cluster_vectors(10, 0, seed=5)
    assert loaded.manifest["version"] == version
    np.testing.assert_array_equal(loaded.scores(probe), model.scores(probe))
    assert loaded.threshold == model.threshold
    assert loaded.manifest["versions"]["scikit-learn"]

    (tmp_path / version / "vectors.npz").write_bytes(b"tampered")
    with pytest.raises(GuardError, match="does not match its manifest"):
        load_model(tmp_path)


def test_missing_guard_and_unknown_classifier_are_named(tmp_path, cluster_vectors):
    with pytest.raises(GuardError, match="lethe guard train"):
        load_model(tmp_path / "nothing")
    with pytest.raises(GuardError, match="registered: logreg, mlp"):
        fit_guard({"fit_pos": cluster_vectors(2, 0)}, kind="svm", target_fpr=0.01, seed=0)
    with pytest.raises(GuardError, match="no cal neg vectors"):
        fit_guard({"fit_pos": cluster_vectors(2, 0), "fit_neg": cluster_vectors(2, 1),
                   "cal_pos": cluster_vectors(2, 0)}, kind="mlp", target_fpr=0.01, seed=0)
    with pytest.raises(ValueError, match="already registered"):
        register_classifier("mlp", lambda seed: None)
