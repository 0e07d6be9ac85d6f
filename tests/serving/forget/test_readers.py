"""A reader that keeps lineage.db and forget.db open in a read transaction (a backup tool, an
operator's `sqlite3` shell) neither keeps a forget request from completing nor stalls another
owner's submission; the purge it held up is finished by the worker's next round."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from adapters import ShardStore
from base import sqlite as sqlite_rules
from serving.forget import Worker
from tests.serving.conftest import sqlite_queue
from tests.support.sqlite_files import held_reader, holds

QUESTION = "What did person-0001 tell the bank?"


@pytest.mark.latency
def test_a_long_reader_stalls_neither_the_forget_nor_another_owners_submission(
        tiny_world, monkeypatch):
    monkeypatch.setattr(sqlite_rules, "CHECKPOINT_SECONDS", 1.0)  # the bound, shortened
    home = Path(tiny_world()["home"])
    store, queue = ShardStore(home / "apa"), sqlite_queue(home / "forget.db")
    victim = store.lineage.owner_sample_ids("person-0001")
    texts = store.lineage.sample_texts(victim) + [QUESTION]
    [shard] = store.lineage.shards_of(victim)
    other = next(ids for o in ("person-0000", "person-0002", "person-0003")
                 if shard not in store.lineage.shards_of(ids := store.lineage.owner_sample_ids(o)))
    request, _ = queue.submit("person-0001", victim, [QUESTION], [shard])
    shards = sorted(store.lineage.shards_of(other))
    worker = Worker(queue, home / "apa", lease_seconds=30.0, retry_after=0.0, retry_max=1.0,
                    poll_seconds=0.1)
    readers = [held_reader(home / "apa" / "lineage.db"), held_reader(home / "forget.db")]

    waits: list[float] = []
    working = threading.Event()

    def submit_meanwhile() -> None:  # what POST /v1/forget writes: the request, its holds
        while working.is_set():
            start = time.monotonic()
            submitted, _ = queue.submit(None, other, [f"question {len(waits)}"], shards)
            store.lineage.hold_quarantine(submitted.id, shards)
            waits.append(time.monotonic() - start)
            time.sleep(0.1)

    working.set()
    submitter = threading.Thread(target=submit_meanwhile)
    submitter.start()
    try:
        assert worker.run_once() == [request.id]
    finally:
        working.clear()
        submitter.join()

    assert max(waits) < 2.0, waits
    receipt = queue.get(request.id).receipt
    assert receipt["text_purged"] is False  # said so: a reader held the lineage's WAL
    # Its WAL still holds the purged rows' frames, but sealed (keyring.py): their keys are
    # shredded and the epoch that wrapped them ended, so not even now is a text there to read.
    assert not [f for t in texts for path in (home / "apa" / "lineage.db", home / "forget.db")
                for f in holds(path, t)]

    for reader in readers:
        reader.close()
    worker.run_once()  # finishes the purges first, then takes the other owner's requests
    for path in (home / "apa" / "lineage.db", home / "forget.db"):
        assert not [f for t in texts for f in holds(path, t)], path
