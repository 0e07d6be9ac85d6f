import hashlib
import sqlite3

import numpy as np
import pytest

from adapters import Lineage, LineageError, UnknownSampleError, synth_people
from base import open_database


# The routing keys of the six samples: unit vectors, sample i's with its largest part on axis i.
KEYS = (np.eye(6, 8) + 0.1).astype(np.float32)
KEYS /= np.linalg.norm(KEYS, axis=1, keepdims=True)


@pytest.fixture
def lineage(database_target, tmp_path):
    """A lineage in each backend (SQLite file, PostgreSQL); the same contract."""
    samples = synth_people(3, seed=0, facts_per_person=2)  # person-0000..0002, two facts each
    lineage = Lineage(open_database(database_target), tmp_path / "secret.key")
    lineage.assign(samples, np.array([0, 0, 1, 1, 1, 0]), KEYS, 2)
    return lineage


def sizes(lineage) -> dict[int, int]:
    return {row["shard"]: row["samples"] for row in lineage.shard_table()}


def test_shard_samples_are_the_live_samples_sorted_by_id(lineage):
    assert [s.id for s in lineage.shard_samples(0)] == [
        "person-0000-fact0", "person-0000-fact1", "person-0002-fact1"]
    assert sizes(lineage) == {0: 3, 1: 3}


def test_tombstone_reports_shards_and_survives_reopening(lineage, database_target, tmp_path):
    assert lineage.tombstone(["person-0001-fact0", "person-0000-fact0"]) == {
        0: ["person-0000-fact0"], 1: ["person-0001-fact0"]}
    reopened = Lineage(open_database(database_target), tmp_path / "secret.key")
    assert reopened.forgotten_ids() == {"person-0000-fact0", "person-0001-fact0"}
    assert "person-0000-fact0" not in [s.id for s in reopened.shard_samples(0)]
    assert sizes(reopened) == {0: 2, 1: 2}


def test_unknown_ids_are_named_and_nothing_is_tombstoned(lineage):
    with pytest.raises(UnknownSampleError, match="nobody-1") as info:
        lineage.tombstone(["person-0000-fact0", "nobody-1"])
    assert info.value.missing == ["nobody-1"]
    assert lineage.forgotten_ids() == set()


def test_owner_lookup(lineage):
    assert lineage.owner_sample_ids("person-0001") == ["person-0001-fact0", "person-0001-fact1"]
    with pytest.raises(UnknownSampleError, match="owner"):
        lineage.owner_sample_ids("person-9999")


def test_purge_drops_text_of_forgotten_samples_only(lineage):
    lineage.tombstone(["person-0000-fact0"])
    assert lineage.purge_text(["person-0000-fact0", "person-0000-fact1"]) == 1
    rows = lineage._query("SELECT id, prompt, content_hash FROM samples WHERE owner = 'person-0000' "
                           "ORDER BY id")
    assert rows[0][1] is None and len(rows[0][2]) == 64  # text gone, hash kept
    assert rows[1][1] is not None


def test_routing_keys_are_of_live_samples_only(lineage):
    ids, shards, keys = lineage.live_keys()
    assert ids == ["person-0000-fact0", "person-0000-fact1", "person-0002-fact1",
                   "person-0001-fact0", "person-0001-fact1", "person-0002-fact0"]
    assert shards.tolist() == [0, 0, 0, 1, 1, 1]
    assert keys.tobytes() == KEYS[[0, 1, 5, 2, 3, 4]].tobytes()  # as assigned, bit for bit
    # no mean of keys is stored (an old mean less the live keys would be a forgotten key)
    assert not lineage.centroids().any()
    lineage.tombstone(["person-0000-fact0"])
    assert lineage.live_keys()[0][0] == "person-0000-fact1"  # a tombstoned key is not read
    lineage.purge_text(["person-0000-fact0"])
    [(key,)] = lineage._query("SELECT route_key FROM samples WHERE id = 'person-0000-fact0'")
    assert key is None
    assert len(lineage.live_keys()[0]) == 5


def test_a_second_partition_is_refused(lineage):
    with pytest.raises(LineageError, match="already holds a partition"):
        lineage.assign(synth_people(1), np.array([0]), KEYS[:1], 1)


def test_a_purge_leaves_no_copy_of_the_text_in_any_file(tmp_path):
    victim = synth_people(3, seed=0, facts_per_person=2)[0]
    lineage = Lineage(open_database(tmp_path / "lineage.db"), tmp_path / "secret.key")
    lineage.assign(synth_people(3, seed=0, facts_per_person=2), np.array([0, 0, 1, 1, 1, 0]),
                   KEYS, 2)
    other = sqlite3.connect(lineage.database.path)  # another process's connection, open throughout
    other.execute("SELECT COUNT(*) FROM samples").fetchall()
    lineage.tombstone([victim.id])
    lineage.purge_text([victim.id])
    files = sorted(p for p in tmp_path.iterdir() if p.is_file())
    assert tmp_path / "lineage.db-wal" in files  # the log is there, truncated
    for path in files:
        data = path.read_bytes()
        for text in (victim.prompt, victim.response):
            assert text.encode() not in data, f"{text!r} survives in {path.name}"
        assert KEYS[0].tobytes() not in data, f"the routing key survives in {path.name}"
    other.close()


def test_a_purge_leaves_the_text_in_no_row_of_the_database(lineage):
    victim = synth_people(3, seed=0, facts_per_person=2)[0]
    lineage.tombstone([victim.id])
    lineage.purge_text([victim.id])
    rows = lineage._query("SELECT * FROM samples")
    assert rows and not any(victim.prompt in str(row) or victim.response in str(row)
                            for row in rows)


def test_the_hash_kept_after_a_purge_cannot_be_found_by_hashing_the_text(lineage, tmp_path):
    victim = synth_people(3, seed=0, facts_per_person=2)[0]
    lineage.tombstone([victim.id])
    lineage.purge_text([victim.id])
    [(kept,)] = lineage._query("SELECT content_hash FROM samples WHERE id = ?", (victim.id,))
    guesses = ["\x1f".join((victim.id, victim.owner, victim.prompt, victim.response)),
               victim.prompt, victim.response, victim.prompt + victim.response]
    assert kept not in {hashlib.sha256(g.encode()).hexdigest() for g in guesses}
    assert kept == lineage.content_hash(victim)  # the key holder can still prove identity
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600
