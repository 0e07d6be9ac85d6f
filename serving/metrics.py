"""Prometheus metrics, named in vLLM's style with a `lethe:` prefix."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # the *_created series only add noise to scrapes

# Seconds; the low end is first-token latency on a GPU, the high end long CPU generations.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lethe:requests", "HTTP requests by endpoint and status code.",
            ["endpoint", "status"], registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "lethe:time_to_first_token_seconds", "Time from request to first generated token.",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.e2e_latency = Histogram(
            "lethe:e2e_request_latency_seconds", "Time from request to last generated token.",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "lethe:prompt_tokens", "Prompt tokens processed.", registry=self.registry,
        )
        self.generation_tokens = Counter(
            "lethe:generation_tokens", "Tokens generated.", registry=self.registry,
        )

        # Counted, never shown to the client: the response does not say that the guard fired.
        self.guard_flagged = Counter(
            "lethe:guard_flagged", "Requests the guard flagged, by the rule that fired.",
            ["rule"], registry=self.registry,
        )
        self.mixture_hits = Counter(
            "lethe:mixture_cache_hits", "Requests whose shard mixture was already built.",
            registry=self.registry,
        )
        self.mixture_misses = Counter(
            "lethe:mixture_cache_misses", "Requests whose shard mixture was built for them.",
            registry=self.registry,
        )
        self.guard_exemplars = Gauge(
            "lethe:guard_exemplars", "Forget requests the guard holds exemplars for (pending).",
            registry=self.registry,
        )
        self.forget_states = Gauge(
            "lethe:forget_requests_in_state", "Forget requests in each state (failed ones are "
            "retried until they complete).", ["state"], registry=self.registry,
        )
        self.forget_requests = Counter(
            "lethe:forget_requests", "Forget requests accepted (duplicates not counted).",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
