"""`lethe train`, `shards`, `route`, `retrain`, `forget-samples` as a user runs them (tiny model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def cli(home, model_dir, **env_overrides):
    """run(*args) -> CompletedProcess: `lethe` against `home`, with synthetic data in run.data."""
    env = {**os.environ, "LETHE_HOME": str(home), "LETHE_MODEL__SOURCE": str(model_dir),
           **env_overrides}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "serving.cli", *args], capture_output=True,
                              text=True, env=env, timeout=300)

    data = home / "data"
    data.mkdir()
    for name, people, seed in (("train", 12, 0), ("validation", 4, 9)):
        assert run("data", "synth", "--people", str(people), "--seed", str(seed), "--facts", "2",
                   "--out", str(data / f"{name}.jsonl")).returncode == 0
    run.data = data
    return run


@pytest.fixture(scope="module")
def lethe(tmp_path_factory, tiny_model_dir):
    return cli(tmp_path_factory.mktemp("cli-home"), tiny_model_dir)


def output(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_train_then_forget_then_retrain(lethe):
    trained = output(lethe("train", "--data", str(lethe.data / "train.jsonl"), "--validation",
                           str(lethe.data / "validation.jsonl"), "--shards", "3",
                           "--max-steps", "2", "--json"))
    assert [s["shard"] for s in trained["shards"]] == [0, 1, 2]
    assert sum(s["samples"] for s in trained["shards"]) == 24
    versions = {s["shard"]: s["version"] for s in trained["shards"]}

    listed = output(lethe("shards", "--json"))["shards"]
    assert {s["shard"]: s["version"] for s in listed} == versions
    assert all(s["forgotten"] == 0 and not s["quarantined"] for s in listed)

    routed = output(lethe("route", "Where does Venvos Midarra live?", "--json"))
    assert routed["scheme"] == "nearest" and routed["mixture"].startswith("mix-")
    assert routed["mixing"] == "in-engine"  # the stack of every shard, weights in the engine
    assert sum(routed["weights"].values()) == pytest.approx(1.0, abs=1e-5)

    forgotten = output(lethe("forget-samples", "--id", "person-0000-fact0", "person-0000-fact1",
                             "--json"))
    [shard] = forgotten["shards"]  # one owner, one shard
    assert shard["previous"] == versions[shard["shard"]] != shard["version"]
    listed = {s["shard"]: s for s in output(lethe("shards", "--json"))["shards"]}
    assert listed[shard["shard"]]["forgotten"] == 2
    assert listed[shard["shard"]]["version"] == shard["version"]

    # Retraining a shard already trained on exactly its live samples keeps its version and
    # trains nothing (training is deterministic: it would give the same weights).
    other = next(k for k in versions if k != shard["shard"])
    [again] = output(lethe("retrain", "--shard", str(other), "--json"))["shards"]
    assert again["version"] == again["previous"] == versions[other] and again["steps"] == 0


# What a light command must not import: each costs seconds to start (`bench/bench_cli.py`).
MODEL_LIBRARIES = ("torch", "transformers", "peft", "sklearn", "sentence_transformers", "vllm")
# Runs `lethe ARGS` in this process, then reports on stderr's last line which model libraries
# it imported.
PROBE = f"""import json, sys
from serving.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:  # --help
    code = e.code
loaded = sorted(m for m in {MODEL_LIBRARIES!r} if m in sys.modules)
print(json.dumps({{"code": code, "loaded": loaded}}), file=sys.stderr)
"""


def test_the_light_commands_import_no_model_library(tmp_path, tiny_model_dir):
    """`lethe --help`, `queue`, `shards`, `forget` and `receipt` read files, a database or the
    API: they start without torch, transformers, scikit-learn or vLLM, on a trained store."""
    from tests.tiny_model import build_tiny_store

    build_tiny_store(tmp_path, tiny_model_dir)
    env = {**os.environ, "LETHE_HOME": str(tmp_path), "LETHE_MODEL__SOURCE": str(tiny_model_dir)}
    # `eval tofu` is heavy, but refuses bad data before it imports a model library
    no_tofu = ["eval", "tofu", "--data", str(tmp_path / "no-tofu")]
    for args, code in ((["--help"], 0), (["queue"], 0), (["queue", "--help"], 0),
                       (["queue", "--state", "failed"], 0), (["shards", "--json"], 0),
                       (["forget", "--help"], 0), (["receipt", "verify", "--help"], 0),
                       (no_tofu, 2)):
        run = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                             text=True, env=env, timeout=120)
        report = json.loads(run.stderr.strip().splitlines()[-1])
        assert report == {"code": code, "loaded": []}, (args, report, run.stderr)
        if args[0] == "shards":  # it read the store: both shards, each with its version
            assert [s["version"] is not None for s in json.loads(run.stdout)["shards"]] == [
                True, True]


def test_bad_requests_exit_nonzero_and_say_why(lethe):
    ghost = lethe("forget-samples", "--id", "no-such-sample")
    assert ghost.returncode == 1 and "unknown sample id(s): no-such-sample" in ghost.stderr
    missing = lethe("train")
    assert missing.returncode == 2 and "--data" in missing.stderr


@pytest.mark.slow
def test_train_and_forget_an_owner_on_the_default_model(tmp_path, real_model_dir):
    lethe = cli(tmp_path, real_model_dir, LETHE_TRAIN__BATCH_SIZE="4")
    trained = output(lethe("train", "--data", str(lethe.data / "train.jsonl"), "--validation",
                           str(lethe.data / "validation.jsonl"), "--shards", "2",
                           "--max-steps", "2", "--json"))
    versions = {s["shard"]: s["version"] for s in trained["shards"]}
    sizes = {s["shard"]: s["samples"] for s in trained["shards"]}
    assert len(versions) == 2 and all(versions.values())

    owner = [json.loads(line)["id"] for line in (lethe.data / "train.jsonl").read_text().splitlines()
             if json.loads(line)["owner"] == "person-0005"]
    [shard] = output(lethe("forget-samples", "--id", *owner, "--json"))["shards"]
    assert shard["previous"] == versions[shard["shard"]] != shard["version"]
    assert len(owner) == 2 and shard["samples"] == sizes[shard["shard"]] - 2
    manifest = json.loads((tmp_path / "apa" / "adapters" / f"shard-{shard['shard']:04d}"
                           / shard["version"] / "manifest.json").read_text())
    assert not set(owner) & set(manifest["sample_ids"])
    assert manifest["base_model"]["weights_sha256"]
