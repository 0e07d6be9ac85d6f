"""`lethe demo` runs the whole product and checks each of its claims (on the tiny model: the
packaged demo config is the same with SmolLM2 and longer training)."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from tests.serving.conftest import merge, tiny_world_config


def demo(tmp_path, tiny_model_dir, **sections) -> subprocess.CompletedProcess:
    config = merge(tiny_world_config(tmp_path / "ignored", tiny_model_dir), **sections)
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", "demo", "--config", str(tmp_path / "demo.yaml"),
         "--home", str(tmp_path / "demo-home"), "--people", "4", "--json"],
        capture_output=True, text=True, timeout=600)


def test_the_demo_forgets_one_person_and_proves_each_step(tmp_path, tiny_model_dir):
    (tmp_path / "demo-home").mkdir()
    (tmp_path / "demo-home" / ".lethe-demo").touch()  # an earlier run's home
    (tmp_path / "demo-home" / "left-over").write_text("from an earlier run")
    run = demo(tmp_path, tiny_model_dir)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout)
    assert result["ok"] and "failed" not in result
    assert [(s["step"], s["ok"]) for s in result["steps"]] == [(i, True) for i in range(1, 7)]
    learned, forgotten, kept = result["steps"][0], result["steps"][2], result["steps"][3]
    assert learned["fact"] in learned["answer"] and kept["fact"] in kept["answer"]
    assert learned["fact"] not in forgotten["answer"] + forgotten["reworded"]
    assert forgotten["same_shape"]
    [shard] = result["receipt"]["shards"]
    assert shard["new_version"] != shard["old_version"] and shard["forgotten_ids_absent"]
    assert result["timings"]["forget_accepted_s"] < 1.0
    assert {"train_s", "server_start_s", "forget_completed_s", "total_s"} <= set(result["timings"])
    assert not (tmp_path / "demo-home" / "left-over").exists()  # its own home, started afresh
    assert "lethe forget --owner" in run.stderr  # how to do the same with one's own data


def test_a_claim_that_does_not_hold_fails_the_demo_naming_its_step(tmp_path, tiny_model_dir):
    run = demo(tmp_path, tiny_model_dir, train={"learning_rate": 1e-6, "epochs": 1})
    assert run.returncode == 1
    assert "lethe: error: step 1 (a fact only one person's data teaches is answered)" in run.stderr
    result = json.loads(run.stdout)
    assert not result["ok"] and result["failed"].startswith("step 1")
    assert [(s["step"], s["ok"]) for s in result["steps"]] == [(1, False)]


def test_the_demo_never_empties_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "notes.txt").write_text("a user's data")
    run = subprocess.run([sys.executable, "-m", "serving.cli", "demo", "--home", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "was not made by `lethe demo`" in run.stderr
    assert (tmp_path / "notes.txt").read_text() == "a user's data"


def test_the_demo_needs_two_people():
    run = subprocess.run([sys.executable, "-m", "serving.cli", "demo", "--people", "1"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--people must be at least 2" in run.stderr
