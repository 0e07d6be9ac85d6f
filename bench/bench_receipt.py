"""How long `lethe receipt verify` takes, the command's start included (goal: under 1 s for a
receipt of 100 samples).

    .venv/bin/python bench/bench_receipt.py [--samples 100] [--shards 4] [--trained 1000]
        [--adapter-mib 10] [--repeats 10]

A store folder is laid out as a forget leaves it: `--shards` shard versions, each an adapter
of `--adapter-mib` MiB (SmolLM2-135M at r=8 on every linear layer: 9.8 MiB in float32) and a
manifest listing the keyed hashes of its `--trained` samples; a receipt signed with the store's
key names `--samples` forgotten samples spread over those shards. Then `lethe receipt verify`
runs as a user runs it (a new process each time) in three ways, interleaved: the signature
alone (--key), with the store (--store: every adapter hashed, every Merkle root recomputed), and
with the owner's texts too (--texts). Writes bench/results/receipt.json and prints a table.
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

from base import (FORMAT, HASH_KEY, MANIFEST, Receipt, RequestEvidence, ShardEvidence, Signer,
                  load_secret, merkle_root, owner_hash, sample_hash, version_digest)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forget import RESULTS, machine  # noqa: E402

LETHE = Path(sys.executable).with_name("lethe")


def build(root: Path, samples: int, shards: int, trained: int, adapter_mib: float
          ) -> tuple[Path, Path, Path, Path]:
    """(store, receipt file, key file, owner's texts file)."""
    store = root / "apa"
    store.mkdir()
    secret = load_secret(store / HASH_KEY)
    texts = [{"id": f"owner-{i:04d}", "owner": "owner", "prompt": f"Question {i}?",
              "response": f"Answer {i}."} for i in range(samples)]
    forgotten = sorted(sample_hash(secret, t) for t in texts)
    evidence = []
    for shard in range(shards):
        folder = store / "adapters" / f"shard-{shard:04d}"
        version = folder / f"{shard:016x}"
        version.mkdir(parents=True)
        (version / "adapter_model.safetensors").write_bytes(os.urandom(int(adapter_mib * 2**20)))
        (version / "adapter_config.json").write_text("{}")
        hashes = [sample_hash(secret, {"id": f"s{shard}-{i}", "owner": f"o{i}", "prompt": "p",
                                       "response": "r"}) for i in range(trained)]
        (version / MANIFEST).write_text(json.dumps({"content_hashes": hashes}))
        evidence.append(ShardEvidence(
            shard=shard, folder=folder.relative_to(store).as_posix(),
            old_version=f"{shard + 1:016x}", old_digest="0" * 64, new_version=version.name,
            new_digest=version_digest(version),
            samples=trained, trained_on_root=merkle_root(hashes), forgotten_ids_absent=True,
            train_seconds=1.0))
    signer = Signer.of_store(store)
    receipt = signer.sign(Receipt(
        format=FORMAT,
        request=RequestEvidence(id="bench", owner_hash=owner_hash(secret, "owner"),
                                sample_hashes=forgotten, prompts=0),
        shards=evidence, base_model_sha256=None, guard_before=None, guard_after=None,
        text_purged=True, coalesced_with=[], worker="bench", completed_at=time.time()))
    receipt_file, key_file, texts_file = root / "receipt.json", root / "key.json", root / "t.jsonl"
    receipt_file.write_text(receipt.model_dump_json())
    key_file.write_text(json.dumps(signer.record()))
    texts_file.write_text("".join(json.dumps(t) + "\n" for t in texts))
    return store, receipt_file, key_file, texts_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--trained", type=int, default=1000)
    parser.add_argument("--adapter-mib", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store, receipt, key, texts = build(Path(tmp), args.samples, args.shards, args.trained,
                                           args.adapter_mib)
        arms = {"signature (--key)": ["--key", key],
                "with the store (--store)": ["--key", key, "--store", store],
                "with the texts (--store --texts)": ["--key", key, "--store", store,
                                                     "--texts", texts]}
        seconds: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(args.repeats):
            for name, flags in arms.items():
                start = time.perf_counter()
                run = subprocess.run([str(LETHE), "receipt", "verify", str(receipt),
                                      *map(str, flags)], capture_output=True, text=True)
                seconds[name].append(time.perf_counter() - start)
                if run.returncode != 0:
                    raise SystemExit(f"{name}: exit {run.returncode}: {run.stdout}{run.stderr}")
    result = {"machine": machine(), "settings": vars(args),
              "command": "lethe receipt verify (a new process per run)",
              "seconds": {name: {"median": round(statistics.median(s), 3),
                                 "max": round(max(s), 3)} for name, s in seconds.items()}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "receipt.json").write_text(json.dumps(result, indent=2))
    print(f"| `lethe receipt verify`, {args.samples} samples, {args.shards} shards | median s | "
          "max s |\n|---|---|---|")
    for name, s in result["seconds"].items():
        print(f"| {name} | {s['median']} | {s['max']} |")


if __name__ == "__main__":
    main()
