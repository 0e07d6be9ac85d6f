"""The LoRA resolver over a shard store: each request's weighted shard mixture materialised as
one adapter on disk (adapters.ShardStore.resolve: routed, built once, cached, pinned while the
engine may read it). This is the first implementation of `engines.LoRAResolver`."""

from __future__ import annotations

from typing import Literal

import numpy as np

from adapters import RouteConfig, ShardStore

from .engines import LoRA
from .metrics import Metrics


class MaterialisedMixtures:
    def __init__(self, store: ShardStore, route: RouteConfig, metrics: Metrics,
                 quarantine: Literal["flagged", "all", "none"] = "flagged"):
        self.store = store
        self.route = store.effective_route(route)
        self.metrics = metrics
        self.quarantine = quarantine  # who avoids the shards of pending forget requests

    def resolve(self, query: np.ndarray, flagged: bool) -> LoRA | None:
        avoid = self.quarantine == "all" or (self.quarantine == "flagged" and flagged)
        mixture = self.store.resolve(query, self.route, avoid_held=avoid)
        if mixture is None:
            return None
        (self.metrics.mixture_misses if mixture.built else self.metrics.mixture_hits).inc()
        return LoRA(mixture.name, mixture.path)

    def release(self, lora: LoRA) -> None:
        self.store.release(lora.name)

    def sweep(self) -> None:
        self.store.sweep_mixtures()
