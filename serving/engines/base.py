"""The engine contract: what the server hands an engine per request, and what it gets back.

An engine takes a tokenized prompt (or the prompt's token embeddings, possibly corrupted by the
guard) with an optional LoRA adapter, and streams back per-choice deltas. Tokenization, chat
templates, context checks and the OpenAI wire format live in the server, so both engines see the
same inputs and can be tested against each other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Collection, Literal, Protocol

from ..errors import LetheError

if TYPE_CHECKING:
    import numpy as np
    import torch

FinishReason = Literal["stop", "length"]


class EngineError(LetheError):
    """The engine failed to start or to serve a request."""


# A temperature below this decodes greedily, on every engine: vLLM's own rule (its
# _SAMPLING_EPS), which the hf engine follows; dividing logits by 1e-99 gives inf, not tokens.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0  # below GREEDY_BELOW: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # generation ends before the first of these strings
    seed: int | None = None  # same seed, same request: same output
    n: int = 1  # choices per prompt
    logprobs: int = 0  # the k most likely tokens' log-probabilities with each token (tests)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


@dataclass(frozen=True)
class LoRA:
    """A peft-format adapter folder. Names are content-addressed: one name, one set of weights.

    `scales`: per-request multipliers of the adapter's rank components, one per rank (the
    adapter's r, after its alpha / r scaling). The engine computes, per token,
    delta(x) = B @ (scales * (A @ x)): a stacked adapter of K shards (A* = [A_1; ...; A_K],
    B* = [s_1 B_1, ..., s_K B_K]) with scales repeating shard k's weight over its ranks is exactly
    the weighted mixture, with nothing built per weight vector. None: the adapter as written.
    """

    name: str
    path: Path
    scales: tuple[float, ...] | None = None


class LoRAResolver(Protocol):
    """What the pipeline asks for a request's adapter (serving/mixtures.py): the shard mixture,
    in the engine (a stacked adapter and per-request scales) or materialised on disk."""

    def resolve(self, query: np.ndarray, flagged: bool, unrelated: Collection[str] = ()
                ) -> LoRA | None:
        """The adapter for a request embedded as `query` (d,), held for the request until
        `release`; None: the base model serves it. `flagged`: the guard flagged the request
        (it may be served without the shards that pending forget requests hold); `unrelated`:
        pending forget requests the guard found it is not about (their shards may serve it)."""

    def release(self, lora: LoRA) -> None:
        """The engine is done with a request that `resolve` gave `lora`."""

    def sweep(self) -> list[str]:
        """Drop what superseded shard versions left behind and no request holds; returns the
        names of the adapters dropped, for the engine to evict (`Engine.evict`)."""


@dataclass
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: Sampling
    # [T, hidden] float tensor; when set it replaces the embeddings of prompt_token_ids.
    prompt_embeds: torch.Tensor | None = None
    lora: LoRA | None = None
    # Who sent it (a digest of its API key; None without keys): an engine that shares state
    # across requests, such as a prefix cache, shares it within a tenant only.
    tenant: str | None = None


@dataclass(frozen=True)
class Delta:
    """New output of one choice since its previous delta."""

    index: int
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    # per token of token_ids: {token id: log-probability} of the `Sampling.logprobs` most likely
    # (vLLM adds the sampled token when it is not among them)
    logprobs: list[dict[int, float]] = field(default_factory=list)


class Engine(ABC):
    """Base class of engines. Subclasses register with `register_engine` (see registry.py)."""

    def __init__(
        self,
        model_path: Path,
        *,
        dtype: str,
        max_model_len: int,
        max_num_seqs: int,
        max_loras: int,
        max_lora_rank: int,
        kv_cache_gib: int,
        prefix_caching: bool = False,
        rank_scales: bool = True,
        device: str = "cpu",
    ):
        self.model_path = Path(model_path)
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.kv_cache_gib = kv_cache_gib
        self.prefix_caching = prefix_caching  # an engine with a prefix cache uses it only if set
        # Whether requests may carry per-rank scales (`route.mixing: in-engine`); False: every
        # adapter is served as it is (materialised mixtures), which no engine needs more for.
        self.rank_scales = rank_scales
        # A device name (`model.device`): an engine that runs torch itself resolves it
        # (base.resolve_device); vLLM chooses its own.
        self.device = device

    @abstractmethod
    async def start(self) -> None:
        """Load the model; called once inside the server's event loop."""

    @abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[list[Delta]]:
        """Stream deltas until every choice has a finish_reason. Closing the iterator aborts."""

    @abstractmethod
    async def evict(self, name: str) -> None:
        """Drop the adapter `name` from the engine's memory: a superseded stack or mixture,
        whose weights may hold forgotten data. No request in flight uses it; a name the engine
        does not hold is ignored. Served again later, the name is read again from its files."""

    @abstractmethod
    async def check_health(self) -> None:
        """Raise EngineError if the engine can no longer serve (e.g. its process died)."""

    @abstractmethod
    async def shutdown(self) -> None:
        """Release the model and any engine processes."""
