"""The forget worker: makes accepted forget requests exact, in the background.

Each round it leases every request that is waiting (coalescing: one retrain per affected shard,
however many requests touch it), then, while heartbeats keep the lease:

    tombstone the samples -> retrain each affected shard from scratch without them (training
    is deterministic) -> publish the new versions atomically (mixtures of the old versions and
    their loss-table rows are dropped; the server routes every new request to the new versions)
    -> purge the samples' raw text -> lift quarantine -> complete each request with a receipt.

A SIGKILL at any point loses nothing: the requests stay in the queue under a lease that runs
out, the staging folder of an unpublished adapter is dropped by the next registry, tombstones
and purges are idempotent, and the retrain is done again to the same weights.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from adapters import ShardResult, ShardStore

from .queue import ACTIVE, ForgetQueue, ForgetRequest

log = logging.getLogger("lethe.worker")


class Worker:
    def __init__(self, queue: ForgetQueue, store_dir: Path, *, lease_seconds: float,
                 max_attempts: int, retry_after: float, poll_seconds: float,
                 coalesce_seconds: float = 0.0):
        self.queue = queue
        self.store_dir = Path(store_dir)
        self.lease_seconds, self.max_attempts = lease_seconds, max_attempts
        self.retry_after, self.poll_seconds = retry_after, poll_seconds
        self.coalesce_seconds = coalesce_seconds
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def run(self, stop: threading.Event) -> None:
        log.info("worker %s polling the forget queue every %.1f s", self.id, self.poll_seconds)
        while not stop.is_set():
            if not self.run_once():
                stop.wait(self.poll_seconds)

    def run_once(self) -> list[str]:
        """One round; returns the ids of the requests it completed."""
        if self.coalesce_seconds and self.queue.list(("received", "guarded")):
            time.sleep(self.coalesce_seconds)  # the rest of a burst joins this round's retrain
        batch = self.queue.lease(self.id, self.lease_seconds, self.max_attempts, self.retry_after)
        if not batch:
            return []
        ids = [r.id for r in batch]
        log.info("worker %s took %d request(s): %s", self.id, len(batch), ", ".join(ids))
        stop_heartbeat = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(ids, stop_heartbeat),
                                     daemon=True)
        heartbeat.start()
        try:
            store = ShardStore(self.store_dir)
            samples = sorted({i for r in batch for i in r.sample_ids})
            results = {r.shard: r for r in store.forget_samples(samples)}
            receipts = {r.id: self._receipt(r, store, results, ids) for r in batch}
            self.queue.complete(self.id, receipts)
            self._lift_quarantine(store, set(results))
        except Exception as e:  # any failure is recorded on its requests, which are retried
            log.exception("worker %s failed on %s", self.id, ", ".join(ids))
            self.queue.fail(self.id, ids, f"{type(e).__name__}: {e}")
            return []
        finally:
            stop_heartbeat.set()
            heartbeat.join()
        log.info("worker %s completed %s (shards %s)", self.id, ", ".join(ids),
                 sorted(results))
        return ids

    def _heartbeat(self, ids: list[str], stop: threading.Event) -> None:
        while not stop.wait(self.lease_seconds / 3):
            self.queue.heartbeat(self.id, ids, self.lease_seconds)

    def _receipt(self, request: ForgetRequest, store: ShardStore,
                 results: dict[int, ShardResult], batch: list[str]) -> dict:
        """What proves the request exact: each affected shard's old and new version and the
        hash of the sample set the new version was trained on, without the forgotten ids."""
        forgotten = set(request.sample_ids)
        shards = []
        for shard in sorted(store.lineage.shards_of(request.sample_ids)):
            result = results[shard]
            trained_on = (set(store.registry.current(shard).manifest["sample_ids"])
                          if result.version else set())
            shards.append({
                "shard": shard, "old_version": result.previous, "new_version": result.version,
                "samples": result.samples, "sample_set_hash": result.sample_set_hash,
                "forgotten_ids_absent": not (forgotten & trained_on),
                "train_seconds": round(result.seconds, 2)})
        return {
            "request": {"id": request.id, "owner": request.owner,
                        "sample_ids": request.sample_ids,
                        "prompts": len(request.prompts or [])},
            "shards": shards,
            "base_model_sha256": store.info["base_model"].get("weights_sha256"),
            "coalesced_with": [i for i in batch if i != request.id],
            "worker": self.id,
            "completed_at": time.time(),
        }

    def _lift_quarantine(self, store: ShardStore, retrained: set[int]) -> None:
        """Shards retrained here leave quarantine unless a request still pending needs them."""
        pending = {i for r in self.queue.list(ACTIVE) for i in r.sample_ids}
        still = set(store.lineage.shards_of(pending)) if pending else set()
        for shard in retrained - still:
            store.lineage.set_quarantined(shard, False)
