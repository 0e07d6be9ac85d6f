"""Zeroth-order tuning of the corruption against a target score (tiny model, tiny budget)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters import synth_people
from guard import (Corruption, GuardError, Item, ModelSubject, corruption_names, forget_score,
                   forget_scores, load_corruption, save_corruption, tune)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return (AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(tiny_model_dir))


@pytest.fixture
def items():
    return [Item(s.prompt, s.response, paraphrased_answer=s.response.upper(),
                 perturbed_answers=(s.response[::-1],)) for s in synth_people(3, seed=2, facts_per_person=2)]


def test_scores_are_finite_and_change_under_corruption(model, items):
    for kind in ("probability", "truth_ratio"):
        clean = forget_score(kind, ModelSubject(*model), items)
        corrupted = forget_score(kind, ModelSubject(*model, Corruption(sigma=2.0)), items)
        assert clean == forget_score(kind, ModelSubject(*model), items)  # deterministic
        assert clean != corrupted
    with pytest.raises(GuardError, match="paraphrased_answer"):
        forget_score("truth_ratio", ModelSubject(*model), [Item("q?", "a.")])


def test_tuning_with_a_tiny_budget_improves_its_objective(model, items, tmp_path):
    def score(c):
        return {"probability": forget_score("probability", ModelSubject(*model, c), items)}

    def retain(c):
        return forget_score("probability", ModelSubject(*model, c), items[:2])

    target = {"probability": score(None)["probability"] / 2}  # a reference that never saw it
    log = []
    result = tune(score, target, retain=retain, penalty=0.1, names=corruption_names(), dim=128,
                  sigma_range=(0.01, 10.0), budget=8, seed=0, log=log.append)

    assert result.objective_before == pytest.approx(abs(target["probability"]))  # |s - s / 2|
    assert result.objective_after < result.objective_before
    assert len(result.evaluations) == len(log) == 8
    assert min(e["objective"] for e in log) == result.objective_after

    save_corruption(tmp_path, result, {"target": target})
    assert load_corruption(tmp_path) == result.corruption
    assert load_corruption(tmp_path / "untuned") is None


def test_the_objective_sums_the_distance_to_the_target_over_every_metric(model, items):
    kinds = ["probability", "truth_ratio", "rouge_l"]
    target = {kind: 0.5 for kind in kinds}
    before = forget_scores(kinds, ModelSubject(*model), items)
    result = tune(lambda c: forget_scores(kinds, ModelSubject(*model, c), items), target,
                  retain=None, penalty=0.0, names=["rand_noise_first_n"], dim=128,
                  sigma_range=(0.01, 10.0), budget=2, seed=0, k=None)  # sigma alone
    assert result.score_before == before
    assert [e["k"] for e in result.evaluations] == [None, None] and result.corruption.k is None
    assert result.objective_before == pytest.approx(sum(abs(before[k] - 0.5) for k in kinds))
    for record in result.evaluations:
        assert record["objective"] == pytest.approx(
            sum(abs(record["scores"][k] - 0.5) for k in kinds))


def test_a_model_that_already_is_the_reference_gets_the_closest_corruption_tried(model, items):
    """Routed around the shards that hold its data, a flagged prompt is answered by the
    reference itself: no corruption scores best, and tuning returns the best corruption it
    evaluated (never 'none') with its distance, instead of failing."""
    def score(c):
        return {"rouge_l": forget_score("rouge_l", ModelSubject(*model, c), items)}

    result = tune(score, score(None), retain=None, penalty=0.0, names=["rand_noise_first_n"],
                  dim=128, sigma_range=(0.01, 10.0), budget=4, seed=0)
    assert result.objective_before == 0.0
    assert result.corruption is not None and result.objective_after >= 0.0
    assert result.objective_after == min(e["objective"] for e in result.evaluations)


def test_a_score_that_does_not_give_the_targets_metrics_is_refused(model, items):
    with pytest.raises(GuardError, match="target"):
        tune(lambda c: {"rouge_l": 0.0}, {}, retain=None, penalty=0.0,
             names=["rand_noise_first_n"], dim=128, sigma_range=(0.01, 10.0), budget=1, seed=0)
    with pytest.raises(GuardError,
                       match=r"metrics \['rouge_l'\], the target has \['probability'\]"):
        tune(lambda c: {"rouge_l": 0.0}, {"probability": 0.0}, retain=None, penalty=0.0,
             names=["rand_noise_first_n"], dim=128, sigma_range=(0.01, 10.0), budget=1, seed=0)
