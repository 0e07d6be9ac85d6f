"""Crypto-shredding: stored texts are sealed under a key per sample (per request in the queue),
and a purge deletes the key and ends the key ring's epoch, so the raw files of the database (its
pages, WAL, dead row versions, statistics) never hold a forgotten text in plain form, and what
they hold of it can no longer be opened."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from adapters import Sample, ShardStore
from base import KeyRing, KeyRingError, open_database
from tests.support.raw_files import files_holding
from tests.support.sqlite_files import held_reader



def people(n: int = 6) -> list[Sample]:
    """Samples whose texts occur nowhere else (the suite's PostgreSQL holds other tests' data)."""
    tag = uuid.uuid4().hex[:10]
    return [Sample(f"p{i}-f{j}", f"p{i}", f"Where does Zq{tag}x{i} live, fact {j}?",
                   f"Zq{tag}x{i} lives in Town{tag}{i}{j}.") for i in range(n) for j in range(2)]


def test_a_sealed_text_opens_only_where_it_was_sealed_and_never_after_its_key_is_shredded(
        tmp_path, database_target):
    database = open_database(database_target)
    ring = KeyRing(database, tmp_path / "keys", "things")
    with database.write() as db:
        [[a1, a2], [b1]] = ring.seal(db, [("a", ["alpha", "beta"]), ("b", ["gamma"])])
    assert "alpha" not in a1 and ring.open([("a", [a1, a2]), ("b", [b1])]) == [
        ["alpha", "beta"], ["gamma"]]
    for moved in ([("a", [a2])], [("b", [a1])]):  # another place, another name: refused
        with pytest.raises(KeyRingError, match="does not open"):
            ring.open(moved)

    with database.read() as db:  # a backup of the key table, taken before the forget
        backup = db.execute("SELECT name, epoch, wrapped FROM things_keys").fetchall()
    with database.write() as db:
        ring.forget(db, ["a"])
    epoch = ring.rotate()
    with pytest.raises(KeyRingError, match="no key for 'a'"):
        ring.open([("a", [a1])])
    assert ring.open([("a", [a1]), ("b", [b1])], shredded="none") == [None, ["gamma"]]
    assert ring.open([("b", [b1])]) == [["gamma"]]  # rewrapped, still opens
    # The backup's rows are wrapped under an epoch whose KEK is destroyed.
    assert {e for _, e, _ in backup} == {0} and epoch == 1
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["things-kek-1"]


def samples_of(store: ShardStore, owner: str) -> list[Sample]:
    return [s for k in store.lineage.shard_ids() for s in store.lineage.shard_samples(k)
            if s.owner == owner]


def test_sqlite_files_hold_no_forgotten_text_even_with_a_reader_holding_the_wal(make_store):
    store = make_store(people())
    forgotten = samples_of(store, "p0")
    reader = held_reader(store.root / "lineage.db")  # the purge's checkpoint cannot complete
    try:
        store.forget_samples([s.id for s in forgotten])
    finally:
        reader.close()
    assert files_holding(store.root, [t for s in forgotten for t in (s.prompt, s.response)]) == []
    # The search sees the database: what stays (ids) is found in plain form.
    assert files_holding(store.root, [forgotten[0].id])


@pytest.mark.postgres
def test_postgres_files_and_statistics_hold_no_forgotten_text(make_store, postgres_url):
    # The review's repro: ANALYZE before the forget (pg_stats then held half the samples'
    # texts), and another session's REPEATABLE READ snapshot open through the purge (its dead
    # row versions stay in the heap); then every file of the cluster is read raw.
    import psycopg

    database = open_database(postgres_url)
    store = make_store(people(), database=database)

    def statistics() -> list[str]:
        with database.read() as db:
            db.execute("ANALYZE samples")
            return [row for (row,) in db.execute(
                "SELECT COALESCE(most_common_vals::text, '') || "
                "COALESCE(histogram_bounds::text, '') FROM pg_stats "
                "WHERE tablename = 'samples'").fetchall()]

    stats = statistics()
    forgotten = samples_of(store, "p0")
    with psycopg.connect(postgres_url) as reader:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT COUNT(*) FROM samples").fetchone()
        store.forget_samples([s.id for s in forgotten])
    stats += statistics()
    with database.read() as db:
        db.execute("CHECKPOINT")  # every page on disk
        (data_dir,) = db.execute("SHOW data_directory").fetchone()
    texts = [t for s in forgotten for t in (s.prompt, s.response)]
    assert not [t for t in texts for row in stats if t in row]
    assert files_holding(Path(data_dir), texts) == []
    assert files_holding(Path(data_dir), [forgotten[0].owner + "-f0"])  # the search sees data


def test_a_lineage_written_before_texts_were_sealed_is_sealed_when_opened(make_store):
    store = make_store(people(2), train=False)
    plain = store.lineage.shard_samples(0)
    with store.lineage.database.write() as db:  # as an older Lethe wrote it
        db.executemany("UPDATE samples SET prompt = ?, response = ? WHERE id = ?",
                       [(s.prompt, s.response, s.id) for s in plain])
        db.execute("DELETE FROM samples_keys")

    reopened = ShardStore(store.root)
    assert reopened.lineage.shard_samples(0) == plain
    with reopened.lineage.database.read() as db:
        stored = db.execute("SELECT prompt FROM samples").fetchall()
    assert not {s.prompt for s in plain} & {p for (p,) in stored}


def test_an_epoch_left_open_by_a_crash_is_ended_by_the_next_process(tmp_path,
                                                                     database_target):
    # Killed between the commit that forgot a key and the end of the epoch: the next process
    # that opens the ring (the forget worker is restarted at once) ends it.
    database = open_database(database_target)
    ring = KeyRing(database, tmp_path / "keys", "things")
    with database.write() as db:
        ring.seal(db, [("a", ["alpha"])])
        ring.seal(db, [("b", ["beta"])])
    with database.write() as db:
        ring.forget(db, ["a"])
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["things-kek-0"]

    KeyRing(database, tmp_path / "keys", "things")
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["things-kek-1"]
    with database.read() as db:
        assert db.execute("SELECT epoch, pending FROM things_epoch").fetchall() == [(1, 0)]


def test_a_missing_kek_is_never_made_up_again(tmp_path, database_target):
    # A keys folder that is not this database's (a replica with a home of its own, a folder
    # restored from elsewhere): sealing under a new KEK of the same epoch would make texts that
    # no other process can open. It is refused, naming the epoch.
    database = open_database(database_target)
    ring = KeyRing(database, tmp_path / "keys", "things")
    with database.write() as db:
        ring.seal(db, [("a", ["alpha"])])
    ring.rotate()
    (tmp_path / "keys" / "things-kek-1").unlink()
    with pytest.raises(KeyRingError, match="epoch 1 is gone"), database.write() as db:
        ring.seal(db, [("b", ["beta"])])
    assert list((tmp_path / "keys").iterdir()) == []
