"""TOFU's metrics, each checked against a value computed by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from guard import (GuardError, Item, MetricError, forget_quality, metric, metric_names,
                   model_utility, register_metric, rouge_l_recall, truth_ratio_closer_to_1,
                   truth_ratio_true_better)


class Uniform(torch.nn.Module):
    """A language model that gives every token of its vocabulary the same probability, 1/V."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.embedding = torch.nn.Embedding(vocab, 8)

    def get_input_embeddings(self):
        return self.embedding

    def forward(self, inputs_embeds, attention_mask):  # (B, T, D), (B, T)
        return SimpleNamespace(logits=torch.zeros(*inputs_embeds.shape[:2], self.vocab))


@pytest.fixture(scope="module")
def uniform(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return Uniform(len(tokenizer)), tokenizer


ITEMS = [Item("Where does Vosmi Ulkathi live?", "Vosmi Ulkathi lives in Quillmoor.",
              paraphrased_answer="Quillmoor is where Vosmi Ulkathi lives.",
              perturbed_answers=("Vosmi lives in Tolvik.", "Vosmi lives in Brinnick.",
                                 "Vosmi lives by the sea.")),
         Item("What does Vosmi Ulkathi do?", "Vosmi Ulkathi is a beekeeper.",
              paraphrased_answer="A beekeeper.", perturbed_answers=("A clockmaker.",))]


def test_per_token_probability_of_a_uniform_model_is_one_over_the_vocabulary(uniform):
    model, tokenizer = uniform
    assert np.allclose(metric("probability")(model, tokenizer, ITEMS, None), 1 / model.vocab)


def test_truth_ratio_of_a_model_with_no_preference_is_one(uniform):
    assert np.allclose(metric("truth_ratio")(*uniform, ITEMS, None), [1.0, 1.0])


def test_options_probability_shares_the_mass_among_the_answer_and_its_perturbations(uniform):
    # every answer has per-token probability 1/V: 1 / (1 + number of perturbed answers)
    assert np.allclose(metric("probability_options")(*uniform, ITEMS, None), [1 / 4, 1 / 2])


def test_rouge_l_recall_is_the_longest_common_word_subsequence_over_the_reference():
    # reference words: paris is the capital of france (6); in order in the prediction:
    # "the capital" (2); "Paris" and "is" come in the other order
    assert rouge_l_recall("The capital is Paris.", "Paris is the capital of France.") == 2 / 6
    assert rouge_l_recall("PARIS, is the capital of France!", "Paris is the capital of France.") == 1
    assert rouge_l_recall("", "Paris.") == 0 and rouge_l_recall("Paris", "") == 0


def test_truth_ratio_aggregates():
    ratios = np.array([0.5, 2.0])
    assert truth_ratio_true_better(ratios) == pytest.approx((0.5 + 0) / 2)  # max(0, 1 - r)
    assert truth_ratio_closer_to_1(ratios) == pytest.approx((0.5 + 0.5) / 2)  # min(r, 1 / r)


def test_forget_quality_is_the_ks_tests_p_value():
    # disjoint samples of 3 and 3: D = 1, reached by 2 of the C(6, 3) = 20 orderings
    assert forget_quality(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])) == pytest.approx(0.1)
    assert forget_quality(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == 1.0


def test_model_utility_is_the_harmonic_mean():
    assert model_utility([0.5, 1.0]) == pytest.approx(2 / (2 + 1))
    assert model_utility([0.9, 0.0, 0.3]) == 0.0
    with pytest.raises(MetricError, match="finite scores >= 0"):
        model_utility([0.5, float("nan")])


def test_metrics_are_registered_by_name_and_say_what_an_item_lacks(uniform):
    assert metric_names() == ["probability", "probability_options", "rouge_l", "truth_ratio"]
    with pytest.raises(MetricError, match="unknown metric 'bleu'; registered: probability, "):
        metric("bleu")
    with pytest.raises(MetricError, match="already registered"):
        register_metric("rouge_l", lambda *a: np.zeros(0))
    with pytest.raises(GuardError, match="truth_ratio needs paraphrased_answer"):
        metric("truth_ratio")(*uniform, [Item("q?", "a.")], None)
