"""The product as a metric sees it (guard.metrics.Subject): questions in, scores and answers out.

`ServedSubject`: each question as a chat request through the serving pipeline (guard check of
the request, ECO corruption of a flagged prompt, the request's APA shard mixture), scored and
answered by one transformers model with the hf engine's LoRA (a mixture as per-row scales over
the stacked shard adapters, as served): the hf engine's computation, with teacher forcing for the
scores. `EnsembleSubject`: SISA's aggregation, the shard adapters' output probabilities averaged
token by token.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from adapters import ShardStore
from guard import (ANSWER_TOKENS, answer_ids, by_question, chat_prompt, greedy_ids,
                   token_logprobs)

from ..engines import LoRA
from ..engines.lora import MultiLoRA
from ..pipeline import Pipeline

# Questions per pipeline batch and answers per forward. Scoring is compute-bound (whole answers,
# teacher-forced; a question's prompt runs once for its answers, bench/bench_scoring.py): 5
# answers to each of 8 forget questions took 18-20 s at 16 answers a forward, 22 s at 40.
# Greedy decoding reads every weight once per step for the whole batch, so it takes more rows at
# little cost (2 vCPUs, SmolLM2, a K=2 mixture: greedy answers to 16 forget questions took 49 s
# at 8 rows, 31 s at 32; the same answers).
SCORE_BATCH, ANSWER_BATCH = 16, 32


class AdapterModel:
    """The base model with the hf engine's LoRA (engines.MultiLoRA): each row of a forward runs
    its own adapter; a shard mixture served in the engine is per-row scales over one stacked
    adapter, so a batch of many mixtures costs one shrink and one expand per layer (peft's
    mixed batch loops over its adapters: greedy answers to 32 forget questions over 16 mixtures
    took 101 s there, 29 s here, the same tokens)."""

    def __init__(self, model_path: Path, max_rank: int, capacity: int = 16, device: str = "cpu"):
        from transformers import AutoModelForCausalLM

        self.base = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch.float32).to(device).eval()
        self.lora = MultiLoRA(self.base, capacity, max_rank)

    def embed(self, token_ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return self.base.get_input_embeddings()(
                torch.tensor(token_ids, device=self.base.device))  # (T, D)

    @contextmanager
    def rows(self, loras: list[LoRA | None]) -> Iterator[dict]:
        """guard.AdapterRows: row j of the forwards inside runs loras[j] (None: no adapter)."""
        with self.lora.batch(loras):
            yield {}


class ServedSubject:
    """Questions as the server answers them; remembers which ones the guard flagged.

    `computed` (shared by the subjects of one evaluation) holds what was computed, keyed by what
    the server computes for a question: its prompt's tokens and its adapter (a content-addressed
    name, one set of weights, and the per-rank scales of its mixture). Two states that serve a
    question alike (an unflagged question while forget requests are pending, or the reference
    when its shard versions are the exact state's) share one computation. A prompt the guard
    corrupted has no key: its embeddings are drawn per request, so it is always computed.
    """

    def __init__(self, model: AdapterModel, tokenizer, pipeline: Pipeline,
                 computed: dict | None = None):
        self.model, self.tokenizer, self.pipeline = model, tokenizer, pipeline
        self.computed = {} if computed is None else computed
        self.flagged: dict[str, bool] = {}
        self.counts = Counter()  # question scorings and answers: "computed" or "reused"

    def _batches(self, questions: list[str], size: int, needed):
        """Per engine batch of the questions that `needed(index, key)` says are still to compute:
        (question indices, their keys, prompt embeddings (T, D) each, each one's LoRA or None),
        the batch's mixtures held until the next one."""
        for i in range(0, len(questions), size):
            chats = [[{"role": "user", "content": q}] for q in questions[i:i + size]]
            prompts = [self.pipeline.chat(m, self.pipeline.chat_tokens(m)) for m in chats]
            try:
                todo = []
                for r, prompt in enumerate(prompts, start=i):
                    self.flagged[questions[r]] = prompt.flagged
                    key = None if prompt.flagged else (
                        tuple(prompt.token_ids),
                        None if prompt.lora is None else (prompt.lora.name, prompt.lora.scales))
                    fresh = needed(r, key)
                    self.counts["computed" if fresh else "reused"] += 1
                    if fresh:
                        todo.append((r, key, prompt))
                if todo:
                    rows, keys, prompts_todo = zip(*todo)
                    yield rows, keys, [p.embeds if p.embeds is not None
                                       else self.model.embed(p.token_ids) for p in prompts_todo], \
                        [p.lora for p in prompts_todo]
            finally:
                self.pipeline.release(prompts)

    def sweep(self) -> None:
        """What the server's sync does once a forget is exact: drop the mixtures of superseded
        versions from disk and from the model's memory (their weights may hold forgotten data)."""
        for name in self.pipeline.sweep():
            self.model.lora.evict(name)

    def logprobs(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        return np.array([t.mean().item() for t in self.token_logprobs(pairs)])

    def token_logprobs(self, pairs: list[tuple[str, str]]) -> list[torch.Tensor]:
        """(Ta,) log-probability of each answer token of each (question, answer)."""
        questions, answers, where = by_question(pairs)
        scored: dict[int, list[torch.Tensor]] = {}

        def needed(r: int, key) -> bool:
            if key is None:
                return True
            known = [self.computed.get(("logprobs", key, a)) for a in answers[r]]
            if any(t is None for t in known):
                return True
            scored[r] = known
            return False

        for rows, keys, embeds, loras in self._batches(questions, SCORE_BATCH, needed):
            out = token_logprobs(self.model.base, embeds,
                                 [[answer_ids(self.tokenizer, questions[r], a)
                                   for a in answers[r]] for r in rows],
                                 adapters=loras, batch_size=SCORE_BATCH,
                                 rows_with=self.model.rows)
            for r, key, group in zip(rows, keys, out):
                scored[r] = group
                if key is not None:
                    self.computed.update({("logprobs", key, a): t
                                          for a, t in zip(answers[r], group)})
        return [scored[g][j] for g, j in where]

    def answers(self, questions: list[str]) -> list[str]:
        out: dict[int, str] = {}

        def needed(r: int, key) -> bool:
            if key is None or ("answer", key) not in self.computed:
                return True
            out[r] = self.computed["answer", key]
            return False

        for rows, keys, embeds, loras in self._batches(questions, ANSWER_BATCH, needed):
            ids = greedy_ids(self.model.base, embeds, {self.tokenizer.eos_token_id},
                             ANSWER_TOKENS, batch_size=ANSWER_BATCH,
                             adapters=[[lora] for lora in loras], rows_with=self.model.rows)
            for r, key, t in zip(rows, keys, ids):
                out[r] = self.tokenizer.decode(t, skip_special_tokens=True)
                if key is not None:
                    self.computed["answer", key] = out[r]
        return [out[r] for r in range(len(questions))]

    def flagged_rate(self, questions: list[str]) -> float:
        return float(np.mean([self.flagged[q] for q in questions]))


class EnsembleSubject:
    """SISA: every shard adapter answers; their probabilities are averaged per token."""

    def __init__(self, model: AdapterModel, tokenizer, store: ShardStore):
        self.model, self.tokenizer = model, tokenizer
        self.loras = [LoRA(f"shard-{v.shard}-{v.id}", v.path) for v in store.current_versions()]

    def _prompt(self, question: str) -> torch.Tensor:
        ids, _ = chat_prompt(self.tokenizer, [{"role": "user", "content": question}])
        return self.model.embed(ids)  # (T, D)

    def logprobs(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        k = len(self.loras)
        questions, answers, where = by_question(pairs)
        scored = token_logprobs(  # question g's answers under shard s: scored[g * k + s]
            self.model.base, [self._prompt(q) for q in questions for _ in range(k)],
            [[answer_ids(self.tokenizer, q, a) for a in group]
             for q, group in zip(questions, answers) for _ in range(k)],
            adapters=self.loras * len(questions), rows_with=self.model.rows)
        out = []
        for g, j in where:
            per_shard = torch.stack([scored[g * k + s][j] for s in range(k)])  # (K, Ta)
            out.append((per_shard.logsumexp(0) - np.log(k)).mean().item())  # log mean prob
        return np.array(out)

    def answers(self, questions: list[str]) -> list[str]:
        ids = greedy_ids(self.model.base, [self._prompt(q) for q in questions],
                         {self.tokenizer.eos_token_id}, ANSWER_TOKENS,
                         adapters=[self.loras] * len(questions), rows_with=self.model.rows)
        return [self.tokenizer.decode(t, skip_special_tokens=True) for t in ids]
