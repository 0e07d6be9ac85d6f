"""The stores' databases: no message shows a URL's password, and a long SQLite reader neither
stalls a purge nor the writers beside it (the purge finishes once the reader is gone)."""

import threading
import time
import traceback

import pytest

from base import DatabaseError, finish_purges, open_database
from base import sqlite as sqlite_rules
from serving.cli import main
from tests.support.sqlite_files import held_reader, holds

PASSWORD = "pw-0123456789-secret"
SECRET_TEXT = "Alice's pin is 8142"


@pytest.mark.parametrize("url", [
    f"postgresql://lethe:{PASSWORD}@127.0.0.1:1/lethe",
    f"postgresql://lethe@127.0.0.1:1/lethe?password={PASSWORD}",
    f"postgresql://lethe@127.0.0.1:1/lethe?connect_timeout=5&sslpassword={PASSWORD}",
    f"postgresql://lethe:{PASSWORD}%zz@127.0.0.1:1/lethe",  # libpq quotes the bad token
    f"postgresql://lethe@127.0.0.1:1/lethe?password={PASSWORD}%zz",
    f"postgresql://lethe:{PASSWORD} x@127.0.0.1:1/lethe",  # "unexpected spaces found in ..."
    f"postgresql://lethe@127.0.0.1:1/lethe?password={PASSWORD}&nonsense=1",
    f"mysql://lethe:{PASSWORD}@db/lethe",  # an unknown scheme
])
def test_a_connection_error_never_shows_the_password(url):
    with pytest.raises(DatabaseError) as info:
        open_database(url)
    printed = "".join(traceback.format_exception(info.value))  # what a logged traceback shows
    assert "secret" not in printed
    assert "lethe" in str(info.value)  # the database is still named


def test_lethe_shards_never_prints_the_password(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LETHE_STORE__URL",
                       f"postgresql://lethe@127.0.0.1:1/lethe?password={PASSWORD}")
    monkeypatch.setenv("LETHE_HOME", str(tmp_path))
    assert main(["shards"]) == 1
    err = capsys.readouterr().err
    assert "127.0.0.1" in err and "password=***" in err and "secret" not in err


@pytest.mark.postgres
def test_a_database_is_named_without_its_passwords(postgres_url):
    url = postgres_url.replace("postgres:@", f"postgres:{PASSWORD}@") + f"&sslpassword={PASSWORD}"
    assert PASSWORD in url  # trust authentication: the server ignores it
    db = open_database(url)
    assert "secret" not in db.url and db.url.endswith("&sslpassword=***")
    with pytest.raises(DatabaseError) as info, db.read() as conn:
        conn.execute("SELECT nothing FROM nowhere")
    assert "secret" not in str(info.value)


# --- the SQLite purge's checkpoint ----------------------------------------------------------


def _emptied_under_a_reader(path):
    """(database, reader): SECRET_TEXT written and set to NULL while a reader holds a read
    transaction (from before the update) open on the file."""
    db = open_database(path)
    with db.write() as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
        conn.execute("INSERT INTO notes VALUES (?)", (SECRET_TEXT,))
    reader = held_reader(path)
    with db.write() as conn:
        conn.execute("UPDATE notes SET text = NULL")
    return db, reader


@pytest.mark.latency
def test_a_reader_bounds_the_purge_and_never_stalls_a_writer_and_the_purge_finishes_later(tmp_path):
    path = tmp_path / "store.db"
    db, reader = _emptied_under_a_reader(path)

    waits: list[float] = []
    purging = threading.Event()

    def write_meanwhile() -> None:
        while purging.is_set():
            start = time.monotonic()
            with db.write() as conn:
                conn.execute("INSERT INTO notes VALUES ('other')")
            waits.append(time.monotonic() - start)
            time.sleep(0.02)

    purging.set()
    writer = threading.Thread(target=write_meanwhile)
    writer.start()
    start = time.monotonic()
    db.purged("notes")
    took = time.monotonic() - start
    purging.clear()
    writer.join()

    assert took < sqlite_rules.CHECKPOINT_SECONDS + 1.0
    assert len(waits) > 20 and max(waits) < 1.0, waits  # writers went on throughout
    assert db.purge_pending() and holds(path, SECRET_TEXT)  # pending: the log still has it
    assert finish_purges() == [f"sqlite:///{path}"]  # the reader is still there

    reader.close()
    assert finish_purges() == [] and not db.purge_pending()
    assert holds(path, SECRET_TEXT) == []


def test_a_later_purge_completes_one_a_reader_held_up(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_rules, "CHECKPOINT_SECONDS", 0.5)
    path = tmp_path / "store.db"
    db, reader = _emptied_under_a_reader(path)
    db.purged("notes")
    assert db.purge_pending()
    reader.close()
    db.purged("notes")
    assert not db.purge_pending() and holds(path, SECRET_TEXT) == []
