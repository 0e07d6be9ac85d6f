"""base.VersionedDir: atomic, content-addressed version folders and a CURRENT pointer."""

import json
import os
import signal
import subprocess
import sys
import textwrap

from base import MANIFEST, StagingArea, VersionedDir


def put(versions: VersionedDir, version: str, text: str, **manifest) -> None:
    with versions.staging.folder() as staged:
        (staged / "data.txt").write_text(text)
        versions.store(staged, version, manifest)


def test_store_writes_the_manifest_and_reuses_an_intact_version(tmp_path):
    versions = VersionedDir(tmp_path / "v")
    put(versions, "one", "first", created_at=1.0, note="x")
    put(versions, "two", "second", created_at=0.5)
    put(versions, "one", "again", created_at=2.0)  # intact: the first one is kept
    assert (versions.path("one") / "data.txt").read_text() == "first"
    manifest = json.loads((versions.path("one") / MANIFEST).read_text())
    assert manifest == {"created_at": 1.0, "note": "x", "version": "one"}
    assert versions.versions() == ["two", "one"]  # oldest first, by created_at
    assert os.listdir(versions.staging.path) == []


def test_a_damaged_version_is_replaced(tmp_path):
    versions = VersionedDir(tmp_path / "v")
    versions.path("one").mkdir()  # a folder without its manifest: a crash mid-delete
    (versions.path("one") / "junk").write_text("?")
    put(versions, "one", "whole", created_at=1.0)
    assert sorted(os.listdir(versions.path("one"))) == ["data.txt", MANIFEST]


def test_the_pointer_is_read_without_creating_anything(tmp_path):
    assert VersionedDir.pointer(tmp_path / "nowhere") is None
    assert not (tmp_path / "nowhere").exists()
    versions = VersionedDir(tmp_path / "v")
    assert VersionedDir.pointer(versions.root) is None
    put(versions, "one", "first")
    versions.publish("one")
    assert VersionedDir.pointer(tmp_path / "v") == "one"


def test_a_writer_killed_mid_write_leaves_nothing_visible_and_is_swept(tmp_path):
    versions = VersionedDir(tmp_path / "v")
    put(versions, "one", "first")
    versions.publish("one")
    child = textwrap.dedent(f"""
        import os, signal
        from base import VersionedDir
        versions = VersionedDir({str(tmp_path / "v")!r})
        with versions.staging.folder() as staged:
            (staged / "data.txt").write_text("half of something since forgotten")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", child], cwd=os.getcwd())
    assert proc.returncode == -signal.SIGKILL
    assert len([p for p in versions.staging.path.iterdir() if p.is_dir()]) == 1
    reopened = VersionedDir(tmp_path / "v")
    assert list(reopened.staging.path.iterdir()) == []  # swept on open
    assert reopened.versions() == ["one"] and VersionedDir.pointer(reopened.root) == "one"


def test_a_live_writers_staging_folder_is_not_swept(tmp_path):
    area = StagingArea(tmp_path / "staging")
    with area.folder() as staged:
        StagingArea(tmp_path / "staging")  # another process opening the area meanwhile
        assert staged.is_dir()
