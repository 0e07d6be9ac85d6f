"""Unlearning metrics as TOFU (Maini et al. 2024) and open-unlearning define them, by name.

A metric scores each item of a set (one value per item, so that forget quality can compare
distributions) of a subject: anything that scores answers and answers questions (`Subject`):
a model whose prompts are corrupted as the server corrupts flagged ones (`ModelSubject`), or the
whole serving pipeline (serving/evaluation):

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
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from .corrupt import Corruption, request_seed
from .errors import GuardError
from .mask import chat_prompt
from .prompts import Item

Metric = Callable[..., np.ndarray]  # (subject, items) -> (N,)
ANSWER_TOKENS = 48  # greedy answers' length: TOFU's answers are one or two sentences
_METRICS: dict[str, Metric] = {}


class MetricError(GuardError, ValueError):
    """An unknown metric, or items that lack what a metric needs."""


def register_metric(name: str, fn: Metric) -> None:
    if name in _METRICS:
        raise MetricError(f"metric {name!r} is already registered")
    _METRICS[name] = fn


def metric_names() -> list[str]:
    return sorted(_METRICS)


def metric(name: str) -> Metric:
    if name not in _METRICS:
        raise MetricError(f"unknown metric {name!r}; registered: {', '.join(metric_names())}")
    return _METRICS[name]


class Subject(Protocol):
    """What a metric asks of the model under test, prompt by prompt."""

    def logprobs(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """(N,) mean log-probability per answer token of each (question, answer)."""

    def answers(self, prompts: list[str]) -> list[str]:
        """The greedy answer to each question."""


@dataclass(frozen=True)
class ModelSubject:
    """A transformers model that reads every question as the server reads a flagged one:
    its user tokens corrupted by `corruption` (None: as written), the noise seeded by the text."""

    model: object
    tokenizer: object
    corruption: Corruption | None = None
    max_tokens: int = ANSWER_TOKENS

    def _prompt(self, question: str) -> torch.Tensor:
        ids, mask = chat_prompt(self.tokenizer, [{"role": "user", "content": question}])
        with torch.inference_mode():
            embeds = self.model.get_input_embeddings()(torch.tensor(ids))  # (T, D)
            if self.corruption is not None:
                embeds = self.corruption(embeds, mask, request_seed(question))
        return embeds

    def logprobs(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        scored = token_logprobs(self.model, [self._prompt(q) for q, _ in pairs],
                                [answer_ids(self.tokenizer, q, a) for q, a in pairs])
        return np.array([t.mean().item() for t in scored])

    def answers(self, prompts: list[str]) -> list[str]:
        out = greedy_ids(self.model, [self._prompt(q) for q in prompts],
                         eos={self.tokenizer.eos_token_id}, max_tokens=self.max_tokens)
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in out]


def answer_ids(tokenizer, question: str, answer: str) -> list[int]:
    """The tokens of `answer` as the chat template puts it after the user's `question`."""
    user = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": answer}],
                                         tokenize=False)
    return tokenizer(full[len(prompt):], add_special_tokens=False).input_ids


def token_logprobs(model, prompts: list[torch.Tensor], answers: list[list[int]],
                   adapters: list[str] | None = None, batch_size: int = 8) -> list[torch.Tensor]:
    """(Ta_i,) log-probability of each answer token after prompt i's embeddings (Tp_i, D);
    with `adapters`, row i runs through the peft adapter adapters[i] (a mixed-adapter batch)."""
    embedding = model.get_input_embeddings()
    out = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            rows = [torch.cat([p, embedding(torch.tensor(a))])  # (T, D)
                    for p, a in zip(prompts[i:i + batch_size], answers[i:i + batch_size])]
            width = max(len(r) for r in rows)
            batch = torch.zeros(len(rows), width, rows[0].shape[1])  # (B, T, D), right-padded
            attention = torch.zeros(len(rows), width, dtype=torch.long)  # (B, T)
            for b, r in enumerate(rows):
                batch[b, :len(r)], attention[b, :len(r)] = r, 1
            kwargs = {"adapter_names": adapters[i:i + batch_size]} if adapters else {}
            logits = model(inputs_embeds=batch.to(embedding.weight.dtype),
                           attention_mask=attention, **kwargs).logits  # (B, T, V)
            for b, (p, a) in enumerate(zip(prompts[i:i + batch_size], answers[i:i + batch_size])):
                start = len(p)  # the token at position t is predicted at t - 1
                logprobs = logits[b, start - 1:start - 1 + len(a)].float().log_softmax(-1)
                out.append(logprobs.gather(1, torch.tensor(a)[:, None])[:, 0])  # (Ta,)
    return out


def greedy_ids(model, prompts: list[torch.Tensor], eos: set[int], max_tokens: int,
               adapters: list[list[str]] | None = None, batch_size: int = 8) -> list[list[int]]:
    """Greedy continuation (token ids, up to the first of `eos`) of each prompt's embeddings
    (T_i, D). With `adapters`, prompt i runs once per peft adapter named in adapters[i] and each
    next token is the argmax of their mean probabilities (SISA's output ensemble; one name: that
    adapter alone)."""
    names = adapters or [[None]] * len(prompts)
    out = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            out += _greedy_batch(model, prompts[i:i + batch_size], names[i:i + batch_size], eos,
                                 max_tokens)
    return out


def _greedy_batch(model, prompts, names, eos, max_tokens) -> list[list[int]]:
    rows = [(p, name) for p, group in zip(prompts, names) for name in group]  # one per adapter
    owner = torch.tensor([j for j, group in enumerate(names) for _ in group])  # (B,) prompt of row
    B, T, D = len(rows), max(len(p) for p, _ in rows), prompts[0].shape[1]
    embedding = model.get_input_embeddings()
    inputs = torch.zeros(B, T, D, dtype=embedding.weight.dtype)  # (B, T, D), left-padded
    mask = torch.zeros(B, T, dtype=torch.long)  # (B, T)
    for b, (p, _) in enumerate(rows):
        inputs[b, T - len(p):], mask[b, T - len(p):] = p, 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    kwargs = {"adapter_names": [n for _, n in rows]} if rows[0][1] is not None else {}
    result = model(inputs_embeds=inputs, attention_mask=mask, position_ids=positions,
                   use_cache=True, **kwargs)
    tokens: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for _ in range(max_tokens):
        probs = result.logits[:, -1].float().softmax(-1)  # (B, V)
        mean = torch.zeros(len(prompts), probs.shape[1]).index_add_(0, owner, probs)  # (P, V)
        chosen = mean.argmax(-1)  # (P,) the sums' argmax is the means'
        for j, token in enumerate(chosen.tolist()):
            if not done[j]:
                done[j] = token in eos
                if not done[j]:
                    tokens[j].append(token)
        if all(done):
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long)], dim=1)
        positions = positions[:, -1:] + 1
        result = model(input_ids=chosen[owner][:, None], attention_mask=mask,
                       position_ids=positions, past_key_values=result.past_key_values,
                       use_cache=True, **kwargs)
    return tokens


def _needs(items: list[Item], field: str, metric_name: str) -> None:
    lacking = [i.prompt for i in items if not getattr(i, field)]
    if lacking:
        raise MetricError(f"{metric_name} needs {field} on every item; {len(lacking)} lack it, "
                          f"e.g. {lacking[0]!r} (TOFU's *_perturbed.json files have them)")


def probability(subject: Subject, items: list[Item]) -> np.ndarray:
    _needs(items, "answer", "probability")
    return np.exp(subject.logprobs([(i.prompt, i.answer) for i in items]))


def _perturbed_probabilities(subject: Subject, items: list[Item]) -> list[np.ndarray]:
    """Per item, (P,) per-token probabilities of its perturbed answers."""
    flat = iter(np.exp(subject.logprobs([(i.prompt, a) for i in items
                                         for a in i.perturbed_answers])))
    return [np.array([next(flat) for _ in i.perturbed_answers]) for i in items]


def probability_options(subject: Subject, items: list[Item]) -> np.ndarray:
    _needs(items, "perturbed_answers", "probability_options")
    correct = probability(subject, items)
    wrong = _perturbed_probabilities(subject, items)
    return np.array([c / (c + w.sum()) for c, w in zip(correct, wrong)])


def truth_ratio(subject: Subject, items: list[Item]) -> np.ndarray:
    _needs(items, "paraphrased_answer", "truth_ratio")
    _needs(items, "perturbed_answers", "truth_ratio")
    paraphrased = np.exp(subject.logprobs([(i.prompt, i.paraphrased_answer) for i in items]))
    wrong = _perturbed_probabilities(subject, items)
    return np.array([w.mean() / p for w, p in zip(wrong, paraphrased)])


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
