"""Zeroth-order tuning of the corruption against a target score (tiny model, tiny budget)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters import synth_people
from guard import (Corruption, GuardError, Item, ModelSubject, corruption_names, forget_score, load_corruption,
                   save_corruption, tune)


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
    score = lambda c: forget_score("probability", ModelSubject(*model, c), items)  # noqa: E731
    target = score(None) / 2  # a reference that never saw the data scores lower
    log = []
    result = tune(score, target, retain=lambda c: forget_score("probability", ModelSubject(*model, c), items[:2]),
                  penalty=0.1, names=corruption_names(), dim=128, sigma_range=(0.01, 10.0),
                  budget=8, seed=0, log=log.append)

    assert result.objective_before == pytest.approx(target)  # |score - score / 2|
    assert result.objective_after < result.objective_before
    assert len(result.evaluations) == len(log) == 8
    assert min(e["objective"] for e in log) == result.objective_after

    save_corruption(tmp_path, result, {"target": target})
    assert load_corruption(tmp_path) == result.corruption
    assert load_corruption(tmp_path / "untuned") is None
