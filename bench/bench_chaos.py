"""Chaos benchmark of forget requests (tests/support/chaos.py): SIGKILLs of the server, a second
worker and CLI retrains at random moments while forget requests arrive; then every 202 must be
completed, no CURRENT shard trained on a forgotten id, no forgotten text in any file.

    .venv/bin/python bench/bench_chaos.py [--kills 50] [--people 48] [--shards 4] [--seed 0]

Runs on the tiny random model (tests/tiny_model.py), built in seconds: what is under test is the
machinery (queue, leases, locks, publish, purge), not what the adapters learn. Writes
bench/results/chaos.json and exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests` is not installed

from tests.support.chaos import run_chaos  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--people", type=int, default=48)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--kill-every", type=float, default=2.0, help="mean seconds between kills")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lethe-chaos-") as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny-model")
        report = run_chaos(Path(tmp) / "run", model_dir, kills=args.kills, people=args.people,
                           shards=args.shards, kill_every=args.kill_every, seed=args.seed)
    report["machine"] = f"{platform.machine()}, {os.cpu_count()} vCPU"
    report["config"]["model"] = "tiny random Llama (tests/tiny_model.py)"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chaos.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
