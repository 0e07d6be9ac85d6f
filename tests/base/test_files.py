"""made_once: a file or folder made by one process, whole or absent, with what a dead maker left
swept."""

import subprocess
import sys
import time

import pytest

from base import made_once


def test_a_file_is_made_once_and_then_read(tmp_path):
    calls = []

    def make(path):
        calls.append(path)
        path.write_text("graph")

    target = tmp_path / "cache" / "model.onnx"
    assert made_once(target, make) == target and target.read_text() == "graph"
    assert made_once(target, make) == target
    assert len(calls) == 1 and calls[0].parent == target.parent and calls[0] != target
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx", "model.onnx.lock"]


def test_a_folder_is_renamed_into_place_whole(tmp_path):
    def make(path):
        path.mkdir()
        (path / "weights").write_bytes(b"\0" * 1024)
        (path / "provenance.json").write_text("{}")

    target = made_once(tmp_path / "minilm.static", make)
    assert sorted(p.name for p in target.iterdir()) == ["provenance.json", "weights"]


def test_a_failed_make_leaves_nothing_and_what_a_killed_maker_left_is_swept(tmp_path):
    target = tmp_path / "model.onnx"
    (tmp_path / f".model.onnx.{'0' * 32}.part").write_bytes(b"half")  # a maker killed mid-write
    (tmp_path / f".model.onnx.{'1' * 32}.part").mkdir()  # and one of a folder
    (tmp_path / f".model.onnx.int8.{'2' * 32}.part").write_bytes(b"")  # another target's: kept

    def fail(path):
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        made_once(target, fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".model.onnx.int8.{'2' * 32}.part",
                                                          "model.onnx.lock"]
    made_once(target, lambda path: path.write_text("whole"))
    assert target.read_text() == "whole"


def test_a_second_process_waits_for_the_first_and_does_not_make_it_again(tmp_path):
    target, started = tmp_path / "model.onnx", tmp_path / "started"
    script = ("import sys, time; from pathlib import Path; from base import made_once\n"
              "def make(path):\n"
              "    Path(sys.argv[2]).touch(); time.sleep(float(sys.argv[3]))\n"
              "    path.write_text(sys.argv[4])\n"
              "made_once(Path(sys.argv[1]), make)\n"
              "print(Path(sys.argv[1]).read_text())")
    first = subprocess.Popen([sys.executable, "-c", script, str(target), str(started), "2",
                              "first"], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not started.exists():  # the first is making it, under the lock
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    second = subprocess.run([sys.executable, "-c", script, str(target), str(tmp_path / "again"),
                             "0", "second"], capture_output=True, text=True, timeout=60)
    assert first.communicate(timeout=60)[0].strip() == "first"
    assert second.returncode == 0 and second.stdout.strip() == "first", second.stderr
    assert not (tmp_path / "again").exists()  # the second never made it
