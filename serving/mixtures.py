"""The LoRA resolver over a shard store (engines.LoRAResolver): each request's weighted shard
mixture, routed, pinned while the engine may read its files (adapters.ShardStore.resolve).

`in-engine` (default): the stack of the current shard versions, built once per set of versions,
with the request's weights as per-rank scales that the engine applies; `materialised`: each
weight vector's mixture as an adapter of its own on disk (built once, cached).
"""

from __future__ import annotations

from typing import Collection, Literal

import numpy as np

from adapters import RouteConfig, ShardStore

from .engines import LoRA
from .metrics import Metrics


class ShardMixtures:
    def __init__(self, store: ShardStore, route: RouteConfig, metrics: Metrics,
                 quarantine: Literal["matched", "flagged", "all", "none"] = "matched"):
        self.store = store
        self.route = store.effective_route(route)
        self.metrics = metrics
        self.quarantine = quarantine  # who avoids the shards of pending forget requests

    def resolve(self, query: np.ndarray, flagged: bool, unrelated: Collection[str] = ()
                ) -> LoRA | None:
        avoid = self.quarantine == "all" or (self.quarantine != "none" and flagged)
        # matched: the shards of requests the guard knows the prompt is not about still answer
        spared = unrelated if self.quarantine == "matched" else ()
        mixture = self.store.resolve(query, self.route, avoid_held=avoid, spared=spared,
                                     stacked=self.route.mixing == "in-engine")
        if mixture is None:
            return None
        (self.metrics.mixture_misses if mixture.built else self.metrics.mixture_hits).inc()
        return LoRA(mixture.name, mixture.path, mixture.scales)

    def release(self, lora: LoRA) -> None:
        self.store.release(lora.name)

    def sweep(self) -> list[str]:
        return self.store.sweep_mixtures()
