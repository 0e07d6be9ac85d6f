"""The guard as the server uses it: train, check, instant exemplars, background refit."""

import time

import numpy as np
import pytest

from guard import Guard, GuardError, load_model, save_model, train_guard


@pytest.fixture
def guard(tmp_path, minilm, people_items):
    forget, negatives = people_items
    model, _ = train_guard(forget, negatives, minilm, kind="mlp", target_fpr=0.05, holdout=0.3,
                           seed=0, embedder="all-MiniLM-L6-v2")
    save_model(model, tmp_path / "guard")
    return Guard.load(tmp_path / "guard", minilm)


def test_training_reports_held_out_rates_and_records_provenance(minilm, people_items):
    forget, negatives = people_items
    model, report = train_guard(forget, negatives, minilm, kind="mlp", target_fpr=0.05,
                                holdout=0.3, seed=0, embedder="all-MiniLM-L6-v2")
    assert report["calibration"]["fpr"] <= 0.05
    assert report["test"]["n_positives"] + report["calibration"]["n_positives"] == 9
    assert 0 <= report["test"]["tpr"] <= 1
    data = model.manifest["data"]
    assert len(data["forget_sha256"]) == 64 and data["forget_items"] == 30
    assert "Where" not in str(model.manifest)  # hashes and counts, never the prompts


def test_forget_prompts_are_flagged_and_unrelated_ones_are_not(guard, people_items):
    forget, _ = people_items
    hits = [guard.check([item.prompt]).flagged for item in forget]
    assert np.mean(hits) >= 0.8
    for prompt in ("What is the capital of France?", "Write a haiku about autumn rain."):
        verdict = guard.check([prompt])
        assert not verdict.flagged and verdict.rule is None


def test_an_added_exemplar_flags_its_duplicate_and_a_near_duplicate_within_a_second(guard):
    model = guard.model
    prompt = "Which violin did Torvel Quimarra sell to the museum in Brinnick?"
    reworded = "Which violin did Torvel Quimarra sell to the Brinnick museum?"
    assert not guard.check([prompt]).flagged

    start = time.perf_counter()
    guard.add_exemplar("request-1", [prompt, "Torvel Quimarra sold the 1781 Galvor violin."])
    duplicate, near = guard.check([prompt]), guard.check([reworded])
    elapsed = time.perf_counter() - start

    assert elapsed < 1.0
    assert guard.model is model  # no refit
    assert duplicate.flagged and duplicate.rule == "exemplar" and duplicate.exemplar == "request-1"
    assert near.flagged and near.rule == "exemplar"
    assert guard.exemplars.get("request-1").shape == (2, guard.dim)  # vectors, never the text

    assert guard.retire_exemplar("request-1")
    assert not guard.check([prompt]).flagged


def test_refit_folds_exemplars_into_the_classifier_and_swaps_atomically(guard, tmp_path):
    prompt = "Which violin did Torvel Quimarra sell to the museum in Brinnick?"
    texts = [prompt, "Torvel Quimarra sold the 1781 Galvor violin to the Brinnick museum.",
             "Where does Torvel Quimarra keep his violins?", "Torvel Quimarra keeps them in Saltmere."]
    old = guard.model
    guard.add_exemplar("request-1", texts)
    guard.refit()

    assert guard.model is not old
    assert guard.model.manifest["parent"] == old.manifest["version"]
    assert guard.model.manifest["refit_positives"] == 4
    assert load_model(tmp_path / "guard").manifest["version"] == guard.model.manifest["version"]
    guard.retire_exemplar("request-1")
    assert guard.check([prompt]).rule == "classifier"  # still covered after the exemplar is gone
    assert guard.refit() is guard.model  # nothing new to fold in


def test_chat_markup_is_stripped_before_classifying(guard, people_items):
    forget, _ = people_items
    plain = guard.check([forget[0].prompt])
    wrapped = guard.check([f"<|im_start|>user\n{forget[0].prompt}<|im_end|>\n"])
    assert wrapped.score == pytest.approx(plain.score)


def test_a_guard_refuses_an_embedder_of_another_dimension(tmp_path, guard):
    with pytest.raises(GuardError, match="384-dim"):
        Guard.load(tmp_path / "guard", lambda texts: np.zeros((len(texts), 64), np.float32))


def test_a_guard_without_a_classifier_flags_by_exemplars_alone(minilm):
    guard = Guard.exemplars_only(minilm, exemplar_threshold=0.8)
    prompt = "Where does Torvel Quimarra live?"
    assert not guard.check([prompt]).flagged
    guard.add_exemplar("request-1", [prompt, "Torvel Quimarra lives in Brinnick."])
    assert guard.check(["Tell me where Torvel Quimarra lives."]).rule == "exemplar"
    assert not guard.check(["Where does Ada Lovelace live?"]).flagged
    with pytest.raises(GuardError, match="no classifier"):
        guard.refit()
