"""The server's sync with the forget queue (serving/server.py)."""

from __future__ import annotations

import asyncio

from serving.server import _sync


class Forget:
    def __init__(self):
        self.synced = 0

    def sync(self) -> None:
        self.synced += 1


class Resolver:
    def sweep(self) -> list[str]:
        return ["mix-superseded-1", "mix-superseded-2"]


class Engine:
    def __init__(self):
        self.evicted: list[str] = []

    async def evict(self, name: str) -> None:
        self.evicted.append(name)


def test_a_sync_evicts_the_swept_stacks_from_the_engine():
    # Deleted from disk only, a superseded stack (it may hold forgotten data) would stay in the
    # engine's adapter cache.
    forget, engine = Forget(), Engine()
    asyncio.run(_sync(forget, Resolver(), engine))
    assert forget.synced == 1
    assert engine.evicted == ["mix-superseded-1", "mix-superseded-2"]
