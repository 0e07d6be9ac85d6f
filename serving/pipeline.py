"""What one prompt becomes before the engine sees it: guard, corruption, route, mixture.

    guard check of the user's text (embedded once; the vector is reused for routing)
      flagged: the prompt's token embeddings, corrupted on every user token (ECO), or a refusal
    adapter: the LoRA resolver's answer for the request's vector: today the weighted shard
      adapters (APA, quarantined shards excluded) as one cached mixture (serving/mixtures.py)

Flagged prompts are routed like any other, so nothing in the response's form tells the client
that the guard fired (policy `corrupt`); the server log and /metrics do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from guard import Corruption, Guard, Verdict, chat_prompt, request_seed

from .engines import LoRA, LoRAResolver
from .errors import LetheError
from .metrics import Metrics

log = logging.getLogger("lethe.pipeline")


class GuardRefusal(LetheError):
    """The guard flagged the request and the policy is `refuse`: the convention of hosted APIs."""

    http_status = 400
    code = "content_filter"


@dataclass(frozen=True)
class Prompt:
    """One engine request's input."""

    token_ids: list[int]
    embeds: torch.Tensor | None  # (T, D) corrupted embeddings when the guard flagged the prompt
    lora: LoRA | None  # the request's shard mixture; None: the base model


class Pipeline:
    def __init__(self, tokenizer, embedding: torch.Tensor | None, guard: Guard | None,
                 corruption: Corruption, resolver: LoRAResolver | None,
                 on_flag: Literal["corrupt", "refuse"], metrics: Metrics):
        self.tokenizer = tokenizer
        self.embedding = embedding  # (V, D) the model's input embeddings; needed with a guard
        self.guard, self.corruption, self.resolver = guard, corruption, resolver
        self.on_flag = on_flag
        self.metrics = metrics

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
        """The request's adapter, held until `release`."""
        if self.resolver is None or verdict is None or len(verdict.vectors) == 0:
            return None
        query = verdict.vectors.mean(axis=0)  # (D,) the request's texts together
        return self.resolver.resolve(query / np.linalg.norm(query))

    def release(self, prompts: list[Prompt]) -> None:
        """The engine is done with these prompts' adapters."""
        for prompt in prompts:
            if prompt.lora is not None:
                self.resolver.release(prompt.lora)

    def sweep(self) -> None:
        """Drop what superseded shard versions left that no request in flight holds."""
        if self.resolver is not None:
            self.resolver.sweep()
