"""How long the light `lethe` commands take to start and finish (goal: 1 s or less each).

    .venv/bin/python bench/bench_cli.py [--repeats 10]

A home with a trained shard store (the tiny random model of the tests, 2 shards) and an empty
forget queue; each command then runs as a user runs it, a new process each time, interleaved
with a reference that imports what `lethe serve` imports (torch, transformers, the guard, the
engines): the cost every command paid when each imported its package whole. Writes
bench/results/cli.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from bench_forget import RESULTS, machine  # noqa: E402

COMMANDS = {  # name -> argv after `python`
    "lethe --help": ["-m", "serving.cli", "--help"],
    "lethe queue": ["-m", "serving.cli", "queue"],
    "lethe queue --help": ["-m", "serving.cli", "queue", "--help"],
    "lethe shards": ["-m", "serving.cli", "shards"],
    "lethe forget --help": ["-m", "serving.cli", "forget", "--help"],
    "lethe receipt verify --help": ["-m", "serving.cli", "receipt", "verify", "--help"],
    "reference: import serving.server": ["-c", "import serving.server"],
}


def trained_home(home: Path) -> None:
    from tests.tiny_model import build_tiny_model, build_tiny_store

    build_tiny_store(home, build_tiny_model(home / "tiny-model"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with tempfile.TemporaryDirectory() as tmp:
        trained_home(Path(tmp))
        env = {**os.environ, "LETHE_HOME": tmp}
        for _ in range(args.repeats):
            for name, argv in COMMANDS.items():
                start = time.perf_counter()
                run = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                                     env=env, cwd=ROOT)
                seconds[name].append(time.perf_counter() - start)
                if run.returncode != 0:
                    raise SystemExit(f"{name}: exit {run.returncode}: {run.stderr}")
    reference = statistics.median(seconds["reference: import serving.server"])
    result = {"machine": machine(), "settings": vars(args),
              "command": "a new process per run, commands interleaved",
              "seconds": {name: {"median": round(statistics.median(s), 3),
                                 "max": round(max(s), 3),
                                 "of_reference": round(statistics.median(s) / reference, 3)}
                          for name, s in seconds.items()}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli.json").write_text(json.dumps(result, indent=2))
    print("| command | median s | max s | x reference |\n|---|---|---|---|")
    for name, s in result["seconds"].items():
        print(f"| {name} | {s['median']} | {s['max']} | {s['of_reference']} |")


if __name__ == "__main__":
    main()
