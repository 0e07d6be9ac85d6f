"""The server's half of a forget request: make it durable, then make the guard enforce it.

submit():  resolve the owner or sample ids in the lineage (unknown ones change nothing) ->
           commit to the queue (durable) -> the affected shards held (unless
           `forget.quarantine: none`; who skips held shards is the router's policy,
           serving/mixtures.py) -> guard exemplars of the samples' text and the request's
           prompts -> `guarded`.
           The API answers 202 only after all of this, so the guard is active before the
           client hears back.
sync():    keep the guard in step with the queue, every `forget.poll_seconds` and whenever the
           queue says a request was submitted or completed anywhere (PostgreSQL's NOTIFY):
           exemplars for active requests it has none for (accepted before a restart, or by
           another replica),
           and retirement of the exemplars of completed ones (the worker made them exact:
           the guard then keeps nothing derived from them, guard/guard.py);
           quarantine holds of requests no longer pending are released (a worker that died
           between completing a request and releasing its holds leaves none behind).

The retraining itself is the worker's (worker.py), in another process. Quarantine is the
lineage's state: a hold per (request, shard), taken here, released when the request is exact.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from adapters import Lineage
from guard import Guard, GuardError

from ..metrics import Metrics
from .queue import ACTIVE, ForgetQueue, ForgetRequest

log = logging.getLogger("lethe.forget")

# Seconds a worker leaves a submitted request to the server guarding it (milliseconds to seconds:
# embedding its texts' forms; make test once saw a worker lease one first, after its 1 s
# coalescing wait, so that it was never marked guarded). A server that dies in between leaves it
# to the next server's sync, or to any worker after this.
GUARD_WITHIN = 30.0


class ForgetService:
    def __init__(self, queue: ForgetQueue, lineage: Lineage, guard: Guard, *,
                 general: dict[str, np.ndarray], quarantine: bool, metrics: Metrics,
                 receipt_key: dict):
        """`general`: the general requests' vectors (guard.general_vectors), reference negatives
        beside the live training prompts. `receipt_key`: the public key that receipts are signed
        with (base.public_key_record: GET /v1/receipts/key)."""
        self.queue, self.lineage, self.guard = queue, lineage, guard
        self.receipt_key = receipt_key
        self.quarantine = quarantine
        self.metrics = metrics
        # submit and sync never interleave their guard updates. Nothing slow runs under it: the
        # guard fits its window head in a thread of its own.
        self._lock = threading.Lock()
        self._active: dict[str, list[str]] = {}  # requests guarded here, until exact -> ids
        self._set_negatives(general)

    def _set_negatives(self, general: dict[str, np.ndarray]) -> None:
        """What the guard calibrates each exemplar against: the training prompts that are not
        forgotten (the near misses: other owners asked the same way) and general requests."""
        live = [s for k in self.lineage.shard_ids() for s in self.lineage.shard_samples(k)]
        vectors = self.guard.embed([s.prompt for s in live])  # (L, D)
        self.guard.set_negatives({**dict(zip([s.id for s in live], vectors)), **general})

    def submit(self, owner: str | None, sample_ids: list[str] | None, prompts: list[str]
               ) -> tuple[ForgetRequest, bool]:
        """(request, created). Raises UnknownSampleError (nothing is stored) for an unknown
        owner or sample id."""
        ids = self.lineage.owner_sample_ids(owner) if owner is not None else sorted(set(sample_ids))
        shards = self.lineage.shards_of(ids)  # every id must exist
        with self._lock:
            request, created = self.queue.submit(owner, ids, prompts, sorted(shards),
                                                 guard_within=GUARD_WITHIN)
            if request.state in ACTIVE and request.id not in self._active:
                self._activate(request)
            if created:
                self.metrics.forget_requests.inc()
                log.info("forget request %s accepted: %d sample(s)", request.id, len(ids))
        return self.queue.get(request.id), created

    def get(self, request_id: str) -> ForgetRequest:
        """Raises UnknownRequestError."""
        return self.queue.get(request_id)

    def sync(self) -> None:
        with self._lock:
            holders = set(self.lineage.quarantine_holds())  # before the queue: a hold taken
            active = {r.id: r for r in self.queue.list(ACTIVE)}  # meanwhile is for an active one
            for request in active.values():
                if request.id not in self._active:
                    try:
                        self._activate(request)
                    except Exception:  # one request never stops the others; retried next sync
                        log.exception("forget request %s could not be guarded", request.id)
            for key in sorted(set(self._active) - set(active)):
                self.guard.retire_exemplar(key)  # and the negatives it forgot
                del self._active[key]
                log.info("forget request %s is exact: the guard no longer holds it", key)
            self.lineage.release_quarantine(holders - set(active))
            self.metrics.guard_exemplars.set(len(self.guard.exemplars))
            for state, count in self.queue.counts().items():
                self.metrics.forget_states.labels(state).set(count)

    def _activate(self, request: ForgetRequest) -> None:
        if self.quarantine:  # first: a prompt flagged as about the request finds its holds
            self.lineage.hold_quarantine(request.id, self.lineage.shards_of(request.sample_ids))
        texts = self.lineage.sample_texts(request.sample_ids) + (request.prompts or [])
        try:
            self.guard.add_exemplar(request.id, texts, covers=request.sample_ids)
        except GuardError:  # the text is purged already: the worker has published the retrain
            log.info("forget request %s has no text left to guard", request.id)
        self.queue.mark_guarded(request.id)
        self._active[request.id] = request.sample_ids
        self.metrics.guard_exemplars.set(len(self.guard.exemplars))
