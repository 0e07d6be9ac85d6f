"""What one prompt becomes before the engine sees it: guard, corruption, route, mixture.

    guard check of everything the model reads: every message of every role, or the completion
      prompt (guard/views.py: each alone, joined, by sentence and in windows; the texts'
      vectors are reused for routing)
      flagged: the prompt's token embeddings, corrupted on every token a client wrote (ECO),
      or a refusal
    adapter: the LoRA resolver's answer for the request's vector: today the weighted shard
      adapters (APA) as one cached mixture (serving/mixtures.py), without the shards that
      pending forget requests hold: when the prompt is flagged, those of the requests the guard
      found it is about (`forget.quarantine: matched`) or every one (`flagged`); or always
      (`all`)

Flagged prompts are routed like any other, so nothing in the response's form tells the client
that the guard fired (policy `corrupt`); the server log and /metrics (admin key) do. Nor does its
timing: with a guard, every prompt is corrupted and reaches the engine as embeddings, a flagged
one's corrupted, any other's its own (`engine.uniform_prompts`). The noise is seeded by a keyed
hash of the prompt under the server's secret, never by the client's `seed` (which would let a
client draw many corruptions of one prompt and vote over the answers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from adapters import RouteConfig, ShardStore
from guard import (Corruption, Guard, SentenceEmbedder, Verdict, chat_prompt, load_corruption,
                   request_seed)

from .config import Config
from .engines import LoRA, LoRAResolver
from .errors import LetheError
from .metrics import Metrics
from .mixtures import ShardMixtures

log = logging.getLogger("lethe.pipeline")


class GuardRefusal(LetheError):
    """The guard flagged the request and the policy is `refuse`: the convention of hosted APIs."""

    http_status = 400
    code = "content_filter"


@dataclass(frozen=True)
class ChatTokens:
    """A chat prompt's token ids and which of them a client wrote (guard/mask.py)."""

    ids: list[int]
    mask: torch.Tensor  # (T,) bool: the messages' content, never the template's own tokens


@dataclass(frozen=True)
class Prompt:
    """One engine request's input."""

    token_ids: list[int]
    # (T, D) what the engine reads instead of the ids: the corrupted embeddings of a flagged
    # prompt, or, with uniform prompts, an unflagged one's own; None: the ids
    embeds: torch.Tensor | None
    lora: LoRA | None  # the request's shard mixture; None: the base model
    flagged: bool = False  # the guard flagged it


# guard.corruption.sigma when it is null. Where the quarantine routes flagged prompts around the
# shards of pending forget requests (forget.quarantine: matched, flagged, all), the weights that
# answer never saw the forgotten data: the corruption tuned against them (`lethe eval tofu`'s
# second tier, docs/benchmarks.md) is mild, and ECO's strength would only drag answers off the
# question, which tells the client the guard fired. Without the quarantine (none) the weights
# hold the data until the retrain and the corruption alone must hide it: ECO's strength.
SIGMA_ROUTED, SIGMA_UNROUTED = 0.02, 1.0


def served_corruption(config: Config) -> Corruption:
    """What corrupts a flagged prompt: the tuned corruption (`lethe guard tune`) if there is
    one, else `guard.corruption` (its sigma by the forget policy when not set)."""
    tuned = load_corruption(config.guard_dir)
    if tuned is not None:
        return tuned
    c = config.guard.corruption
    routed = config.forget.quarantine != "none"
    sigma = c.sigma if c.sigma is not None else SIGMA_ROUTED if routed else SIGMA_UNROUTED
    return Corruption(c.name, sigma, c.k)


def guard_options(config: Config, embedder: SentenceEmbedder) -> dict:
    """How the guard fits its window head, and its first stage's static embedder
    (guard/guard.py, guard/screen.py)."""
    return {"kind": config.guard.head, "target_fpr": config.guard.target_fpr,
            "seed": config.guard.seed, "static": embedder.static()}


def build_pipeline(config: Config, tokenizer, embedding: torch.Tensor | None,
                   guard: Guard | None, store: ShardStore | None, metrics: Metrics,
                   noise_key: bytes, *, route: RouteConfig | None = None,
                   corruption: Corruption | None = None, quarantine: str | None = None
                   ) -> Pipeline:
    """The prompt path as `config` sets it up (the server's and the evaluation's): its route,
    corruption and quarantine unless given; without a shard store, the base model."""
    resolver = (ShardMixtures(store, route or config.route, metrics,
                              quarantine or config.forget.quarantine) if store else None)
    return Pipeline(tokenizer, embedding if guard else None, guard,
                    corruption or served_corruption(config), resolver, config.forget.on_flag,
                    metrics, noise_key, config.engine.uniform_prompts)


class Pipeline:
    def __init__(self, tokenizer, embedding: torch.Tensor | None, guard: Guard | None,
                 corruption: Corruption, resolver: LoRAResolver | None,
                 on_flag: Literal["corrupt", "refuse"], metrics: Metrics, noise_key: bytes,
                 uniform: bool = True):
        self.tokenizer = tokenizer
        self.embedding = embedding  # (V, D) the model's input embeddings; needed with a guard
        self.guard, self.corruption, self.resolver = guard, corruption, resolver
        self.on_flag = on_flag
        self.metrics = metrics
        self.noise_key = noise_key  # the server's secret: seeds the corruption noise
        # Every prompt as embeddings, every one corrupted (config.engine.uniform_prompts).
        self.uniform = uniform

    def chat_tokens(self, messages: list[dict]) -> ChatTokens:
        """The chat prompt, tokenized once (template applied, assistant header added): what the
        context-length check counts, before `chat` is given it."""
        return ChatTokens(*chat_prompt(self.tokenizer, messages))

    def chat(self, messages: list[dict], tokens: ChatTokens) -> Prompt:
        """The chat prompt of `messages`, whose `chat_tokens` are `tokens`."""
        texts = [m["content"] for m in messages]  # every role: the model reads them all
        # Every token a client wrote, in any role, is corrupted (guard/tune.py tunes with the
        # same mask). Corrupting only the item's salient words (names) is not enough: an adapter
        # that holds the item still answers "Where does ... live?" with its fact (measured on
        # SmolLM2, tests/serving/forget/test_forget_real.py).
        return self._prompt(tokens.ids, tokens.mask, texts)

    def completion(self, token_ids: list[int], text: str | None = None) -> Prompt:
        """A raw completion prompt: all of it is the user's text (`text`, as the client sent
        it; None: the ids' decoding)."""
        if text is None:
            text = self.tokenizer.decode(token_ids)
        special = set(self.tokenizer.all_special_ids)
        mask = torch.tensor([t not in special for t in token_ids], dtype=torch.bool)  # (T,)
        return self._prompt(token_ids, mask, [text])

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

    def _prompt(self, ids: list[int], mask: torch.Tensor, texts: list[str]) -> Prompt:
        """The engine's input for the prompt `ids` (T,), of which `mask` (T,) marks the tokens
        a client wrote, and whose texts are `texts`.

        Uniform (the default): every prompt goes the same way, so that timing cannot tell a
        client whether the guard fired. Each is corrupted (the same work: ~1 ms for a
        40-token question on 2 vCPU), and reaches the engine as embeddings, the corrupted ones
        if flagged, its own rows otherwise (the same numbers the engine would look up). vLLM
        reads embeddings a little slower than token ids (measured through the server, a
        40-token question: ~5 ms more to the first token, ~2.5 ms more per token), which told
        flagged prompts apart otherwise (bench/bench_timing.py, docs/guard.md)."""
        verdict = self._check(texts)
        if verdict is None:  # no guard: nothing to hide
            return Prompt(ids, None, None)
        if verdict.flagged and self.on_flag == "refuse":
            raise GuardRefusal("the request was refused by the content filter")
        if not (self.uniform or verdict.flagged):
            return Prompt(ids, None, self._lora(verdict))
        embeds = self.embedding[torch.tensor(ids)]  # (T, D)
        seed = request_seed("\n".join(texts), self.noise_key)
        corrupted = self.corruption(embeds, mask, seed)  # (T, D)
        return Prompt(ids, corrupted if verdict.flagged else embeds, self._lora(verdict),
                      verdict.flagged)

    def _lora(self, verdict: Verdict | None) -> LoRA | None:
        """The request's adapter, held until `release`."""
        if self.resolver is None or verdict is None or len(verdict.vectors) == 0:
            return None
        query = verdict.vectors.mean(axis=0)  # (D,) the request's texts together
        return self.resolver.resolve(query / np.linalg.norm(query), verdict.flagged,
                                     verdict.unrelated)

    def release(self, prompts: list[Prompt]) -> None:
        """The engine is done with these prompts' adapters."""
        for prompt in prompts:
            if prompt.lora is not None:
                self.resolver.release(prompt.lora)

    def sweep(self) -> list[str]:
        """Drop what superseded shard versions left that no request in flight holds; the names
        of the adapters dropped, for the engine to evict."""
        return [] if self.resolver is None else self.resolver.sweep()
