"""Chaos for forget requests: SIGKILL the server, a second worker and CLI retrains at random
moments while forget requests arrive; then restart everything and check the promise.

    run_chaos(workdir, model_dir, kills=50) -> report (dict)

The world: synthetic people (2 facts each) trained into K shard adapters with `lethe train`, on
the model folder given (the tiny random model in `make test`, where only the machinery is under
test). Three kinds of process run beside each other on one data directory, as an operator would
run them: `lethe serve` (hf engine, with its supervised worker), a second worker
(`python -m serving.forget.worker`), and `lethe retrain --shard K` commands. Half of the owners
are forgotten, one forget request posted for every two kills, so requests keep arriving through
the run and the other half keeps every shard serving (the checks are not vacuous). Every
`kill_every` seconds (randomised) one live process, chosen at random, gets SIGKILL and is started
again. After `kills` kills, everything is started once more and left to finish. The checks:

- every request that got a 202 is `completed`, with a receipt whose every shard says
  `forgotten_ids_absent`;
- no shard's CURRENT version was trained on a forgotten sample id;
- no file under the data directory holds a forgotten sample's prompt or response.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from adapters import ShardStore, synth_people, write_samples
from serving.launch import ServerProcess
from tests.support.raw_files import files_holding

ADMIN = "chaos-admin-key-0001"  # keys are >= 16 characters


def _config(home: Path, model_dir: Path, shards: int, max_steps: int) -> dict:
    return {
        "home": str(home),
        "model": {"source": str(model_dir), "name": "chaos", "max_model_len": 256},
        "engine": {"name": "hf"},
        "server": {"admin_keys": [ADMIN]},
        "shards": {"count": shards},
        "train": {"max_steps": max_steps, "batch_size": 4, "max_length": 64},
        "forget": {"poll_seconds": 0.2, "lease_seconds": 3.0, "retry_after_seconds": 0.5,
                   "retry_max_seconds": 2.0, "coalesce_seconds": 0.2,
                   "worker_restart_max_seconds": 2.0},
    }


class _Processes:
    """The live processes of the run, each started again after it is killed."""

    def __init__(self, config: dict, workdir: Path, shards: int, rng: random.Random):
        self.config, self.workdir, self.shards, self.rng = config, workdir, shards, rng
        self.config_file = workdir / "chaos-config.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.server: ServerProcess | None = None
        self.worker: subprocess.Popen | None = None
        self.retrain: subprocess.Popen | None = None
        self.log = open(workdir / "chaos-processes.log", "a")
        self.starts = 0

    def start_server(self) -> None:
        self.starts += 1
        folder = self.workdir / f"server-{self.starts}"
        folder.mkdir()
        self.server = ServerProcess(self.config, folder)

    def start_worker(self) -> None:
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "serving.forget.worker", "--config", str(self.config_file)],
            stdout=self.log, stderr=subprocess.STDOUT)

    def start_retrain(self) -> None:
        shard = self.rng.randrange(self.shards)
        self.retrain = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "retrain", "--shard", str(shard), "--config",
             str(self.config_file)], stdout=self.log, stderr=subprocess.STDOUT)

    def kill_one(self) -> str:
        """SIGKILL one live process chosen at random and start it again; returns its kind."""
        if self.retrain is None or self.retrain.poll() is not None:
            self.start_retrain()  # a retrain is always running, to be killed or to finish
            time.sleep(self.rng.uniform(0.1, 1.0))
        kind = self.rng.choice(["server", "worker", "retrain"])
        process = {"server": self.server.proc, "worker": self.worker, "retrain": self.retrain}[kind]
        process.send_signal(signal.SIGKILL)
        process.wait()
        {"server": self.start_server, "worker": self.start_worker,
         "retrain": self.start_retrain}[kind]()
        return kind

    def stop(self) -> None:
        for process in (self.worker, self.retrain):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
        if self.server is not None:
            self.server.stop()


def _post_forget(url: str, owner: str) -> str | None:
    """The request id of a 202, or None if the server was down or died mid-request."""
    try:
        response = httpx.post(f"{url}/v1/forget", json={"owner": owner}, timeout=30,
                              headers={"Authorization": f"Bearer {ADMIN}"})
    except httpx.HTTPError:
        return None
    return response.json()["id"] if response.status_code == 202 else None


def run_chaos(workdir: Path, model_dir: Path, kills: int = 50, people: int = 24,
              shards: int = 4, max_steps: int = 6, kill_every: float = 2.0, seed: int = 0,
              settle_timeout: float = 600.0) -> dict:
    from serving.cli import main as lethe

    rng = random.Random(seed)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    samples = synth_people(people, seed=seed, facts_per_person=2)
    write_samples(samples, workdir / "people.jsonl")
    config = _config(home, model_dir, shards, max_steps)
    (workdir / "train.yaml").write_text(yaml.safe_dump(config))
    if lethe(["train", "--config", str(workdir / "train.yaml"),
              "--data", str(workdir / "people.jsonl")]) != 0:
        raise RuntimeError("lethe train failed")

    owners = sorted({s.owner for s in samples})
    rng.shuffle(owners)
    owners = owners[:len(owners) // 2]  # to forget; the others keep every shard serving
    processes = _Processes(config, workdir, shards, rng)
    accepted: dict[str, str] = {}  # request id -> owner
    killed: dict[str, int] = {"server": 0, "worker": 0, "retrain": 0}
    start = time.monotonic()
    try:
        processes.start_server()
        processes.start_worker()
        next_kill = time.monotonic() + rng.uniform(0.5, 2 * kill_every)
        while sum(killed.values()) < kills:
            pending = [o for o in owners if o not in accepted.values()]
            if pending and len(accepted) <= sum(killed.values()) // 2:
                request_id = _post_forget(processes.server.url, pending[0])
                if request_id is not None:
                    accepted[request_id] = pending[0]
            time.sleep(0.3)
            if time.monotonic() >= next_kill:
                killed[processes.kill_one()] += 1
                next_kill = time.monotonic() + rng.uniform(0.2, 2 * kill_every)
        chaos_seconds = time.monotonic() - start

        # Everything once more, left alone: every accepted request must complete.
        processes.stop()
        processes.start_server()
        deadline = time.monotonic() + settle_timeout
        states: dict[str, dict] = {}
        while time.monotonic() < deadline:
            states = {rid: httpx.get(f"{processes.server.url}/v1/forget/{rid}", timeout=30,
                                     headers={"Authorization": f"Bearer {ADMIN}"}).json()
                      for rid in accepted}
            if all(s["state"] == "completed" for s in states.values()):
                break
            time.sleep(0.5)
        receipts = {rid: httpx.get(f"{processes.server.url}/v1/forget/{rid}/receipt", timeout=30,
                                   headers={"Authorization": f"Bearer {ADMIN}"}).json()
                    for rid, s in states.items() if s["state"] == "completed"}
    finally:
        processes.stop()
        processes.log.close()

    store = ShardStore(home / "apa")
    forgotten_ids = store.lineage.forgotten_ids()
    forgotten = [s for s in samples if s.id in forgotten_ids]
    tainted = {v.shard: sorted(forgotten_ids & set(v.manifest["sample_ids"]))
               for v in store.current_versions()}
    report = {
        "kills": killed,
        "accepted": len(accepted),
        "completed": sum(s["state"] == "completed" for s in states.values()),
        "not_completed": {rid: s["state"] for rid, s in states.items()
                          if s["state"] != "completed"},
        "receipts_absent_false": sorted(rid for rid, r in receipts.items()
                                        if not all(s["forgotten_ids_absent"]
                                                   for s in r["shards"])),
        "forgotten_samples": len(forgotten),
        "shards_serving": len(tainted),
        "current_trained_on_forgotten": {k: v for k, v in tainted.items() if v},
        "files_holding_forgotten_text": files_holding(
            home, [t for s in forgotten for t in (s.prompt, s.response)]),
        "chaos_seconds": round(chaos_seconds, 1),
        "total_seconds": round(time.monotonic() - start, 1),
        "config": {"people": people, "shards": shards, "max_steps": max_steps,
                   "kill_every": kill_every, "seed": seed, "model": str(model_dir)},
    }
    report["ok"] = (not report["not_completed"] and not report["receipts_absent_false"]
                    and not report["current_trained_on_forgotten"]
                    and not report["files_holding_forgotten_text"]
                    and report["completed"] == report["accepted"] > 0
                    and report["shards_serving"] > 0)
    (workdir / "chaos-report.json").write_text(json.dumps(report, indent=2))
    return report
