"""Sample-adaptive weights over shards (APA's attention), by weighting schemes chosen by name.

`nearest`: attention over the request's n nearest training prompts (the shards' live samples'
routing keys): a = softmax(tau * cosine) over those n, and shard k's weight is the sum of a over
its own. A question about what one shard learned sends its weight there. `apa`: the request's n
nearest validation samples; error_k = mean loss of shard k's adapter on them; w =
softmax(-tau * error). `semantic`: softmax(tau * cosine similarity to the
shard centroids). `uniform`: 1/K. `major`: all weight on the shard `apa` ranks first.

Then, whatever the scheme: excluded (quarantined) shards get 0, the top m are kept, weights are
quantised to a step (so similar requests share one cached mixture) and renormalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from base import Registry

from .errors import AdapterError


class RouteError(AdapterError, ValueError):
    """A scheme lacks what it needs (e.g. `apa` without a validation loss table)."""


class UnknownSchemeError(RouteError, KeyError):
    """No weighting scheme is registered under the name; the message lists those that are."""


# Traits: `needs_losses`, the scheme reads RouteInputs.validation and .losses; `needs_keys`, it
# reads RouteInputs.keys and .key_rows.
SCHEMES: Registry[Scheme] = Registry("weighting scheme", RouteError, UnknownSchemeError,
                                     traits={"needs_losses": False, "needs_keys": False})
register_scheme = SCHEMES.register
scheme_names = SCHEMES.names


class RouteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: str = "nearest"  # a registered weighting scheme (register_scheme)
    # Sharpness of the softmax. Cosines of a question to its own training prompt and to other
    # topics' differ by ~0.3 (nearest), LM losses of shard adapters on one sample by ~0.1-1 nats
    # (apa): tau ~10 separates both; tau=0 gives uniform weights.
    tau: float = Field(default=10.0, ge=0)
    # Training prompts (nearest) or validation samples (apa, major) that judge each shard.
    neighbours: int = Field(default=20, gt=0)
    top_m: int | None = Field(default=None, gt=0)  # keep the m largest weights; None: all
    # Weights are rounded to multiples of this: fewer distinct mixtures, more cache hits.
    quantum: float = Field(default=0.05, ge=0, le=1)
    mixture_cache: int = Field(default=64, gt=0)  # mixtures kept on disk (LRU)
    # in-engine: the engine holds the shards stacked once per set of versions and applies each
    # request's weights itself; materialised: each weight vector becomes an adapter on disk,
    # loaded by the engine (the first request of a vector pays ~0.4 s, bench_mixtures.py).
    mixing: Literal["in-engine", "materialised"] = "in-engine"

    _known = SCHEMES.validator("scheme")


@dataclass(frozen=True)
class RouteInputs:
    query: np.ndarray  # (d,) unit embedding of the request
    centroids: np.ndarray  # (K, d) unit shard centroids
    validation: np.ndarray | None = None  # (V, d) unit embeddings of the validation set
    losses: np.ndarray | None = None  # (K, V) loss of each shard adapter on each validation sample
    keys: np.ndarray | None = None  # (N, d) unit routing keys of the shards' live samples
    key_rows: np.ndarray | None = None  # (N,) the row (of centroids) of each key's shard


Scheme = Callable[[RouteInputs, RouteConfig], np.ndarray]  # -> (K,) non-negative weights


def needs_losses(name: str) -> bool:
    """The scheme's trait `needs_losses=True`: it reads RouteInputs.validation and .losses (a
    store trained without a validation set serves `semantic` instead:
    ShardStore.effective_route)."""
    return SCHEMES.trait(name, "needs_losses")


def needs_keys(name: str) -> bool:
    """The scheme's trait `needs_keys=True`: it reads RouteInputs.keys and .key_rows (a store
    from before routing keys serves `semantic` instead)."""
    return SCHEMES.trait(name, "needs_keys")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def neighbour_errors(inputs: RouteInputs, config: RouteConfig) -> np.ndarray:
    """(K,) mean validation loss of each shard on the request's nearest validation samples."""
    if inputs.validation is None or inputs.losses is None:
        raise RouteError("scheme needs a validation set and its loss table (lethe train --validation)")
    n = min(config.neighbours, len(inputs.validation))
    nearest = np.argsort(-(inputs.validation @ inputs.query), kind="stable")[:n]  # (n,)
    return inputs.losses[:, nearest].mean(axis=1)


def nearest(inputs: RouteInputs, config: RouteConfig) -> np.ndarray:
    if inputs.keys is None or inputs.key_rows is None:
        raise RouteError("scheme needs the shards' routing keys (a store created by this Lethe)")
    weights = np.zeros(len(inputs.centroids))  # (K,)
    if len(inputs.keys) == 0:
        return weights + 1.0 / len(weights)
    similarity = inputs.keys @ inputs.query  # (N,)
    n = min(config.neighbours, len(similarity))
    top = np.argsort(-similarity, kind="stable")[:n]  # (n,)
    np.add.at(weights, inputs.key_rows[top], _softmax(config.tau * similarity[top]))
    return weights


def apa(inputs: RouteInputs, config: RouteConfig) -> np.ndarray:
    return _softmax(-config.tau * neighbour_errors(inputs, config))


def semantic(inputs: RouteInputs, config: RouteConfig) -> np.ndarray:
    return _softmax(config.tau * (inputs.centroids @ inputs.query))


def uniform(inputs: RouteInputs, config: RouteConfig) -> np.ndarray:
    return np.full(len(inputs.centroids), 1.0 / len(inputs.centroids))


def major(inputs: RouteInputs, config: RouteConfig) -> np.ndarray:
    return np.eye(len(inputs.centroids))[np.argmin(neighbour_errors(inputs, config))]


register_scheme("nearest", nearest, needs_keys=True)
register_scheme("apa", apa, needs_losses=True)
register_scheme("semantic", semantic)
register_scheme("uniform", uniform)
register_scheme("major", major, needs_losses=True)


def route(inputs: RouteInputs, config: RouteConfig, shards: list[int],
          excluded: set[int] = frozenset()) -> dict[int, float]:
    """Shard id -> weight (summing to 1) for one request; empty if every shard is excluded.

    shards[i] is the shard id of row i of inputs.centroids and inputs.losses.
    """
    scheme = SCHEMES.get(config.scheme)
    if not shards:
        return {}
    w = np.asarray(scheme(inputs, config), dtype=np.float64)  # (K,)
    if not np.isfinite(w).all():
        raise RouteError(f"scheme {config.scheme!r} gave non-finite weights")
    w[[i for i, k in enumerate(shards) if k in excluded]] = 0.0
    if w.sum() <= 0:
        return {}
    if config.top_m is not None and config.top_m < len(w):
        w[np.argsort(-w, kind="stable")[config.top_m:]] = 0.0
    w /= w.sum()
    if config.quantum > 0:
        rounded = np.round(w / config.quantum) * config.quantum
        w = rounded if rounded.sum() > 0 else (w == w.max()).astype(np.float64)
    w /= w.sum()
    return {k: round(float(x), 6) for k, x in zip(shards, w) if x > 0}
