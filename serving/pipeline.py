"""What one prompt becomes before the engine sees it: guard, corruption, route, mixture.

    guard check of the user's text (embedded once; the vector is reused for routing)
      flagged: the prompt's token embeddings, corrupted on every user token (ECO), or a refusal
    route: weights over the current shard adapters (APA), quarantined shards excluded
    mixture: the weighted shard adapters as one cached, content-addressed LoRA

Flagged prompts are routed like any other, so nothing in the response's form tells the client
that the guard fired (policy `corrupt`); the server log and /metrics do.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from adapters import RegistryError, RouteConfig, ShardStore
from guard import Corruption, Guard, Verdict, chat_prompt, request_seed

from .engines import LoRA
from .metrics import Metrics

log = logging.getLogger("lethe.pipeline")


class GuardRefusal(Exception):
    """The guard flagged the request and the policy is `refuse`."""


@dataclass(frozen=True)
class Prompt:
    """One engine request's input."""

    token_ids: list[int]
    embeds: torch.Tensor | None  # (T, D) corrupted embeddings when the guard flagged the prompt
    lora: LoRA | None  # the request's shard mixture; None: the base model


class Pipeline:
    def __init__(self, tokenizer, embedding: torch.Tensor | None, guard: Guard | None,
                 corruption: Corruption, store: ShardStore | None, route: RouteConfig,
                 on_flag: Literal["corrupt", "refuse"], metrics: Metrics):
        self.tokenizer = tokenizer
        self.embedding = embedding  # (V, D) the model's input embeddings; needed with a guard
        self.guard, self.corruption, self.store = guard, corruption, store
        self.route = store.effective_route(route) if store else route
        self.on_flag = on_flag
        self.metrics = metrics
        self._mixture_lock = threading.Lock()  # one build per mixture; exact hit counts

    def chat(self, messages: list[dict], seed: int | None) -> Prompt:
        """The chat prompt (template applied, assistant header added) of `messages`."""
        user = [m["content"] for m in messages if m["role"] == "user"]
        verdict = self._check(user)
        if verdict is None or not verdict.flagged:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                      tokenize=False)
            return Prompt(self.tokenizer.encode(text, add_special_tokens=False), None,
                          self._lora(verdict))
        # Every token the user wrote is corrupted: the mask the corruption was tuned with
        # (guard/tune.py). Corrupting only the item's salient words (names) is not enough: an
        # adapter that holds the item still answers "Where does ... live?" with its fact
        # (measured on SmolLM2, tests/serving/test_forget_real.py).
        ids, mask = chat_prompt(self.tokenizer, messages)
        return self._flagged(ids, mask, "\n".join(user), seed, verdict)

    def completion(self, token_ids: list[int], seed: int | None) -> Prompt:
        """A raw completion prompt: all of it is the user's text."""
        text = self.tokenizer.decode(token_ids)
        verdict = self._check([text])
        if verdict is None or not verdict.flagged:
            return Prompt(token_ids, None, self._lora(verdict))
        special = set(self.tokenizer.all_special_ids)
        mask = torch.tensor([t not in special for t in token_ids], dtype=torch.bool)
        return self._flagged(token_ids, mask, text, seed, verdict)

    # --- steps -------------------------------------------------------------------------------

    def _check(self, texts: list[str]) -> Verdict | None:
        if self.guard is None:
            return None
        verdict = self.guard.check(texts)
        if verdict.flagged:
            self.metrics.guard_flagged.labels(verdict.rule).inc()
            log.info("guard flagged a request (rule %s, score %.3f, similarity %.3f)",
                     verdict.rule, verdict.score, verdict.similarity)
        return verdict

    def _flagged(self, ids: list[int], mask: torch.Tensor, text: str, seed: int | None,
                 verdict: Verdict) -> Prompt:
        if self.on_flag == "refuse":
            raise GuardRefusal("the request was refused by the content filter")
        embeds = self.embedding[torch.tensor(ids)]  # (T, D)
        corrupted = self.corruption(embeds, mask, request_seed(text, seed))  # (T, D)
        return Prompt(ids, corrupted, self._lora(verdict))

    def _lora(self, verdict: Verdict | None) -> LoRA | None:
        """The request's mixture, pinned until `release`: on disk until the engine is done."""
        if self.store is None or verdict is None or len(verdict.vectors) == 0:
            return None
        query = verdict.vectors.mean(axis=0)  # (D,) the request's texts together
        query /= np.linalg.norm(query)
        try:
            return self._mixture(query)
        except (RegistryError, LookupError, FileNotFoundError):
            # A worker published a retrain between reading the versions and the files (the
            # old version, its loss row or a retired shard is gone): route again on the new.
            return self._mixture(query)

    def _mixture(self, query: np.ndarray) -> LoRA | None:
        weights = self.store.weights(query, self.route)
        if not weights:
            return None
        with self._mixture_lock:
            hits = self.store.mixtures.hits
            mixture = self.store.mixture(weights)
            self.store.mixtures.pin(mixture.name)
            (self.metrics.mixture_hits if self.store.mixtures.hits > hits
             else self.metrics.mixture_misses).inc()
        return LoRA(mixture.name, mixture.path)

    def release(self, prompts: list[Prompt]) -> None:
        """The engine is done with these prompts' mixtures."""
        for prompt in prompts:
            if prompt.lora is not None:
                self.store.mixtures.unpin(prompt.lora.name)

    def sweep(self) -> None:
        """Delete the mixtures of superseded shard versions that no request in flight uses."""
        if self.store is not None:
            with self._mixture_lock:
                self.store.sweep_mixtures()
