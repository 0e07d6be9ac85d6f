"""The forget worker: makes accepted forget requests exact, in the background.

Each round it leases every request that is waiting (coalescing: one retrain per affected shard,
however many requests touch it), then, while heartbeats keep the lease:

    tombstone the samples -> retrain each affected shard from scratch without them (training
    is deterministic) -> publish the new versions atomically (mixtures of the old versions and
    their loss-table rows are dropped; the server routes every new request to the new versions)
    -> purge the samples' raw text -> release quarantine holds -> complete each request with a
    receipt, signed (base/receipts.py) with the deployment's key (`SIGNING_KEY` in the store).

A failure is recorded on its requests, which are retried with backoff for as long as it takes
(a failed round is retried request by request, so one bad request never fails the others). A
SIGKILL at any point loses nothing: the requests stay in the queue under a lease that runs out,
the staging folder of an unpublished adapter is dropped by the next registry, tombstones and
purges are idempotent, and the retrain is done again to the same weights. A purge that a long
reader held up (the receipt's `text_purged` is false) is completed by a later round.

`lethe serve` runs it as `python -m serving.forget.worker --config -`, the config on its stdin
(supervisor.py: no file holds its keys); `lethe worker` runs the same loop in a process of its
own.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from adapters import ShardStore
from base import Database, DatabaseError, Signer, finish_purges
from guard import trained_version

from ..config import Config, load_config
from ..logs import configure_logging
from ..shards import store_database
from .queue import ForgetQueue, ForgetRequest, backoff, open_queue

log = logging.getLogger("lethe.worker")


class Worker:
    def __init__(self, queue: ForgetQueue, store_dir: Path, *, lease_seconds: float,
                 retry_after: float, retry_max: float, poll_seconds: float,
                 coalesce_seconds: float = 0.0, database: Database | None = None,
                 guard_dir: Path | None = None, device: str = "cpu"):
        """`database`: where the store's lineage lives (None: in `store_dir`); `guard_dir`: the
        trained guard whose version receipts name (None: none); `device`: the torch device it
        retrains shards on."""
        self.queue = queue
        self.store_dir = Path(store_dir)
        self.database = database
        self.guard_dir = guard_dir
        self.device = device
        self.lease_seconds = lease_seconds
        self.retry_after, self.retry_max = retry_after, retry_max
        self.poll_seconds = poll_seconds
        self.coalesce_seconds = coalesce_seconds
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    @classmethod
    def from_config(cls, config: Config, queue: ForgetQueue | None = None,
                    store_dir: Path | None = None) -> Worker:
        """The configured worker; `queue` and `store_dir` replace the configured ones (the
        evaluation's stores live in a folder of their own)."""
        f = config.forget
        return cls(queue or open_queue(config.queue_target, f.synchronous, config.secret_file),
                   store_dir or config.store_dir,
                   lease_seconds=f.lease_seconds, retry_after=f.retry_after_seconds,
                   retry_max=f.retry_max_seconds, poll_seconds=f.poll_seconds,
                   coalesce_seconds=f.coalesce_seconds,
                   database=None if store_dir else store_database(config),
                   guard_dir=config.guard_dir, device=config.model.device)

    def run(self, stop: threading.Event) -> None:
        """Rounds until `stop`. An error outside a request's retrain (the queue locked or
        unreadable, a full disk) is logged and the round retried after a backoff: it never ends
        the worker."""
        log.info("worker %s polling the forget queue every %.1f s", self.id, self.poll_seconds)
        errors = 0
        while not stop.is_set():
            try:
                done = self.run_once()
                errors = 0
            except Exception:
                errors += 1
                wait = backoff(errors, self.poll_seconds, self.retry_max)
                log.exception("worker %s: round failed (%d in a row); next in %.1f s", self.id,
                              errors, wait)
                stop.wait(wait)
                continue
            if not done:
                stop.wait(self.poll_seconds)

    def run_once(self) -> list[str]:
        """One round; returns the ids of the requests it completed."""
        self._finish_purges()
        if self.coalesce_seconds and self.queue.list(("received", "guarded")):
            time.sleep(self.coalesce_seconds)  # the rest of a burst joins this round's retrain
        batch = self.queue.lease(self.id, self.lease_seconds)
        if not batch:
            return []
        ids = [r.id for r in batch]
        log.info("worker %s took %d request(s): %s", self.id, len(batch), ", ".join(ids))
        stop_heartbeat = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(ids, stop_heartbeat),
                                     daemon=True)
        heartbeat.start()
        try:
            return self._forget(batch)
        finally:
            stop_heartbeat.set()
            heartbeat.join()

    def _forget(self, batch: list[ForgetRequest]) -> list[str]:
        """Make `batch` exact in one retrain per affected shard. If that fails, each request is
        tried alone, so that one failing request never fails those coalesced with it."""
        ids = [r.id for r in batch]
        guard_before = self._guard_version()
        try:
            # A shard's lock is waited for as long as a request's lease: a stopped worker's
            # requests and shards are both taken over after it.
            store = ShardStore(self.store_dir, database=self.database,
                               shard_wait=self.lease_seconds, device=self.device)
            samples = sorted({i for r in batch for i in r.sample_ids})
            results = store.forget_samples(samples, release=ids)
            guard = (guard_before, self._guard_version())
            receipts = {r.id: self.signer.sign(store.receipt(
                r.sample_ids, results, request=r.id, owner=r.owner, prompts=len(r.prompts or []),
                coalesced_with=[i for i in ids if i != r.id], worker=self.id, guard=guard)
            ).model_dump(mode="json") for r in batch}
            self.queue.complete(self.id, receipts)
        except Exception as e:  # recorded on its requests, which are retried with backoff
            log.exception("worker %s failed on %s", self.id, ", ".join(ids))
            if len(batch) > 1:
                return [done for request in batch for done in self._forget([request])]
            self.queue.fail(self.id, ids, f"{type(e).__name__}: {e}", self.retry_after,
                            self.retry_max)
            return []
        log.info("worker %s completed %s (shards %s)", self.id, ", ".join(ids),
                 sorted(r.shard for r in results))
        return ids

    def _finish_purges(self) -> None:
        """Complete the purges that a reader held up in an earlier round (a SQLite WAL left
        untruncated: base/sqlite.py). An error is logged and tried again next round: it never
        holds up the requests waiting."""
        try:
            finish_purges()
        except DatabaseError:
            log.exception("worker %s: finishing an earlier purge failed; trying again next round",
                          self.id)

    def _heartbeat(self, ids: list[str], stop: threading.Event) -> None:
        """Renew the lease every third of it; an error (the queue busy for a moment) is logged
        and the next beat tried, so the lease does not lapse under a live worker."""
        while not stop.wait(self.lease_seconds / 3):
            try:
                self.queue.heartbeat(self.id, ids, self.lease_seconds)
            except Exception:
                log.exception("worker %s: heartbeat failed; retrying", self.id)

    @functools.cached_property
    def signer(self) -> Signer:
        """Read at the first receipt: a worker may start before `lethe train` made the store."""
        return Signer.of_store(self.store_dir)

    def _guard_version(self) -> str | None:
        return self.guard_dir and trained_version(self.guard_dir)


def die_with(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux PR_SET_PDEATHSIG); exit
    at once if `parent` is gone already (this process was re-parented before it could ask)."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the server stops it itself
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:
        sys.exit(f"the server ({parent}) that started this worker is gone")


def main(argv: list[str] | None = None) -> int:
    """`python -m serving.forget.worker --config FILE|- [--once]`: what `lethe serve` starts."""
    parser = argparse.ArgumentParser(prog="python -m serving.forget.worker", description=__doc__)
    parser.add_argument("--config", type=Path,
                        help="YAML config (keys of configs/default.yaml); -: read from stdin")
    parser.add_argument("--once", action="store_true", help="one round, then exit")
    parser.add_argument("--parent", type=int, help="die with this process (`lethe serve`)")
    args = parser.parse_args(argv)
    if args.parent is not None:
        die_with(args.parent)
    configure_logging()
    config = Path("/dev/stdin") if args.config == Path("-") else args.config
    worker = Worker.from_config(load_config(config))
    if args.once:
        worker.run_once()
    else:
        worker.run(threading.Event())
    return 0


if __name__ == "__main__":
    sys.exit(main())
