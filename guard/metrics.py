"""Unlearning metrics as TOFU (Maini et al. 2024) and open-unlearning define them, by name.

A metric scores each item of a set (one value per item, so that forget quality can compare
distributions) of a subject: anything that scores answers and answers questions (`Subject`):
a model whose prompts are corrupted as the server corrupts flagged ones (guard/subject.py), or
the whole serving pipeline (serving/evaluation):

    fn(subject, items) -> (N,) array

- `probability`: P(answer | question) ** (1 / answer tokens), per-token normalised.
- `probability_options`: the same for the answer, divided by itself plus the same for each
  perturbed (wrong) answer: real_authors' and world_facts' "normalised probability".
- `rouge_l`: ROUGE-L recall of the greedy answer against the answer (words: lower case,
  alphanumeric runs; open-unlearning also stems them, this does not).
- `truth_ratio`: mean over perturbed answers of their per-token probability, over the per-token
  probability of the paraphrased answer. Below 1: the model prefers the truth.

What TOFU makes of them, with no model: `forget_quality` (the KS test's p-value between the
forget truth ratios of a model and of the reference that never saw the forget data), the two
truth-ratio aggregates, and `model_utility` (the harmonic mean of nine retain, real-author and
world-fact scores). Add a metric with `register_metric`.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Protocol

import numpy as np

from base import Registry

from .errors import GuardError
from .prompts import Item

Metric = Callable[..., np.ndarray]  # (subject, items) -> (N,)


class MetricError(GuardError, ValueError):
    """An unknown metric, or items that lack what a metric needs."""


METRICS: Registry[Metric] = Registry("metric", MetricError)
register_metric = METRICS.register
metric_names = METRICS.names
metric = METRICS.get


class Subject(Protocol):
    """What a metric asks of the model under test, prompt by prompt."""

    def logprobs(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """(N,) mean log-probability per answer token of each (question, answer)."""

    def answers(self, prompts: list[str]) -> list[str]:
        """The greedy answer to each question."""


def _needs(items: list[Item], field: str, metric_name: str) -> None:
    lacking = [i.prompt for i in items if not getattr(i, field)]
    if lacking:
        raise MetricError(f"{metric_name} needs {field} on every item; {len(lacking)} lack it, "
                          f"e.g. {lacking[0]!r} (TOFU's *_perturbed.json files have them)")


def probability(subject: Subject, items: list[Item]) -> np.ndarray:
    _needs(items, "answer", "probability")
    return np.exp(subject.logprobs([(i.prompt, i.answer) for i in items]))


def _probabilities(subject: Subject, items: list[Item], answers_of) -> list[np.ndarray]:
    """Per item, the per-token probability of each of its answers `answers_of(item)`, asked in
    one call (a subject reads each question once for all of its answers)."""
    flat = iter(np.exp(subject.logprobs([(i.prompt, a) for i in items for a in answers_of(i)])))
    return [np.array([next(flat) for _ in answers_of(i)]) for i in items]


def probability_options(subject: Subject, items: list[Item]) -> np.ndarray:
    _needs(items, "answer", "probability_options")
    _needs(items, "perturbed_answers", "probability_options")
    scored = _probabilities(subject, items, lambda i: [i.answer, *i.perturbed_answers])
    return np.array([s[0] / s.sum() for s in scored])  # the answer's share among the options


def truth_ratio(subject: Subject, items: list[Item]) -> np.ndarray:
    _needs(items, "paraphrased_answer", "truth_ratio")
    _needs(items, "perturbed_answers", "truth_ratio")
    scored = _probabilities(subject, items,
                            lambda i: [i.paraphrased_answer, *i.perturbed_answers])
    return np.array([s[1:].mean() / s[0] for s in scored])


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def rouge_l_recall(prediction: str, reference: str) -> float:
    """Longest common subsequence of words over the reference's length in words."""
    a, b = words(prediction), words(reference)
    row = [0] * (len(b) + 1)  # row[j]: LCS of the prediction so far and b[:j]
    for x in a:
        previous = 0
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], previous + 1 if x == y else max(row[j], row[j - 1])
    return row[-1] / max(len(b), 1)


def rouge_l(subject: Subject, items: list[Item]) -> np.ndarray:
    _needs(items, "answer", "rouge_l")
    answers = subject.answers([i.prompt for i in items])
    return np.array([rouge_l_recall(a, i.answer) for a, i in zip(answers, items)])


def truth_ratio_true_better(ratios: np.ndarray) -> float:
    """Model utility's truth-ratio term: mean of max(0, 1 - ratio), 1 when the truth wins."""
    return float(np.mean(np.maximum(0.0, 1.0 - ratios)))


def truth_ratio_closer_to_1(ratios: np.ndarray) -> float:
    """The forget set's reported truth ratio: mean of min(ratio, 1 / ratio), 1 when the model
    cannot tell the truth from the perturbations (as a model that never saw them)."""
    return float(np.mean(np.minimum(ratios, 1.0 / ratios)))


def forget_quality(ratios: np.ndarray, reference_ratios: np.ndarray) -> float:
    """p-value of the two-sample KS test between the forget truth ratios of a model and of the
    reference (never trained on the forget set): high when they are indistinguishable."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(ratios, reference_ratios).pvalue)


def model_utility(scores: list[float]) -> float:
    """Harmonic mean (TOFU: probability, ROUGE-L and truth ratio on retain, real authors and
    world facts); 0 if any is 0."""
    scores = [float(s) for s in scores]
    if any(not math.isfinite(s) or s < 0 for s in scores):
        raise MetricError(f"model utility takes finite scores >= 0, got {scores}")
    return 0.0 if min(scores) == 0 else len(scores) / sum(1 / s for s in scores)


register_metric("probability", probability)
register_metric("probability_options", probability_options)
register_metric("rouge_l", rouge_l)
register_metric("truth_ratio", truth_ratio)
