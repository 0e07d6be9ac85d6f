"""Forget receipts end to end: the worker signs each one, and `lethe receipt verify` checks it
offline against the store and the owner's texts, and catches each kind of tampering: a changed
receipt, another key, a swapped adapter, a forgotten hash put back into a manifest, another
owner's texts, no texts at all."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from adapters import ShardStore
from base import MANIFEST, Signer
from serving.forget import Worker
from tests.serving.conftest import PEOPLE, sqlite_queue

OWNER = "person-0002"
WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def completed(tiny_world, tmp_path_factory):
    """(home, the receipt of a completed forget request for OWNER, the owner's samples file)."""
    home = Path(tiny_world()["home"])
    queue = sqlite_queue(home / "forget.db")
    ids = ShardStore(home / "apa").lineage.owner_sample_ids(OWNER)
    request, _ = queue.submit(OWNER, ids, ["Where does this person live?"])
    worker = Worker(queue, home / "apa", lease_seconds=5.0, retry_after=0.0, retry_max=1.0,
                    poll_seconds=0.1)
    assert worker.run_once() == [request.id]
    texts = tmp_path_factory.mktemp("texts") / "owner.jsonl"
    texts.write_text("".join(json.dumps(asdict(s)) + "\n" for s in PEOPLE if s.owner == OWNER))
    return home, queue.get(request.id).receipt, texts


def verify(tmp_path, receipt: dict, *flags) -> tuple[int, dict | str]:
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(receipt))
    run = subprocess.run([sys.executable, "-m", "serving.cli", "receipt", "verify", str(path),
                          "--json", *map(str, flags)], capture_output=True, text=True)
    try:
        return run.returncode, json.loads(run.stdout)
    except json.JSONDecodeError:
        return run.returncode, run.stderr


def failed(output: dict) -> list[str]:
    return [c["what"] for c in output["checks"] if not c["ok"]]


def test_a_receipt_verifies_against_the_store_and_the_owners_texts(completed, tmp_path):
    home, receipt, texts = completed
    code, output = verify(tmp_path, receipt, "--store", home / "apa", "--texts", texts)
    assert code == 0 and output["verified"] and failed(output) == [], output
    whats = {c["what"] for c in output["checks"]}
    [shard] = receipt["shards"]
    assert {"signature", "texts: keyed hashes named by the receipt", "texts: owner hash",
            f"shard {shard['shard']}: adapter digest",
            f"shard {shard['shard']}: no version on disk trained on a forgotten sample",
            f"shard {shard['shard']}: old version {shard['old_version']} deleted",
            "no cached mixture built on a deleted version"} <= whats
    # --store alone: the signature is checked against the public key the store keeps
    assert "the store's receipt.pub" in output["checks"][0]["detail"]
    # The receipt names the owner and the samples by keyed hashes only, never by their text.
    assert len(receipt["request"]["sample_hashes"]) == 2 and receipt["request"]["prompts"] == 1
    assert OWNER not in json.dumps(receipt)
    assert not any(s.prompt in json.dumps(receipt) for s in PEOPLE if s.owner == OWNER)


def test_the_servers_public_key_verifies_it_and_another_key_does_not(completed, tmp_path):
    home, receipt, _ = completed
    key = tmp_path / "key.json"
    key.write_text(json.dumps(Signer.of_store(home / "apa").record()))
    assert verify(tmp_path, receipt, "--key", key)[0] == 0
    key.write_text(Signer.of_store(home / "apa").public_key.hex())  # its bare hex works too
    assert verify(tmp_path, receipt, "--key", key)[0] == 0
    key.write_text(json.dumps(Signer(tmp_path / "another.key").record()))
    code, output = verify(tmp_path, receipt, "--key", key, "--store", home / "apa")
    # nothing else is checked: the rest of a receipt that is not the server's says nothing
    assert code == 1 and [c["what"] for c in output["checks"]] == ["signature"]


@pytest.mark.parametrize("change", [
    lambda r: r["shards"][0].update(forgotten_ids_absent=False),
    lambda r: r["shards"][0].update(new_digest="0" * 64),
    lambda r: r["request"]["sample_hashes"].pop(),
    lambda r: r.update(completed_at=r["completed_at"] + 1),
    lambda r: r.update(text_purged=False),
], ids=["absent-flag", "digest", "hash-dropped", "time", "purged-flag"])
def test_a_changed_receipt_fails_its_signature(completed, tmp_path, change):
    home, receipt, _ = completed
    receipt = json.loads(json.dumps(receipt))
    change(receipt)
    code, output = verify(tmp_path, receipt, "--store", home / "apa")
    assert code == 1 and "signature" in failed(output)


def tampered_store(home: Path, tmp_path: Path, receipt: dict) -> tuple[Path, Path]:
    """(a copy of the store, the folder of the receipt's new version in it)."""
    store = shutil.copytree(home / "apa", tmp_path / "apa")
    [shard] = receipt["shards"]
    return store, store / shard["folder"] / shard["new_version"]


def test_a_swapped_adapter_is_detected(completed, tmp_path):
    home, receipt, _ = completed
    store, version = tampered_store(home, tmp_path, receipt)
    other = next(v for v in ShardStore(store).current_versions()
                 if v.path.name != version.name)
    shutil.copy(other.path / WEIGHTS, version / WEIGHTS)
    code, output = verify(tmp_path, receipt, "--store", store)
    shard = receipt["shards"][0]["shard"]
    assert code == 1 and failed(output) == [f"shard {shard}: adapter digest"]


def test_a_forgotten_hash_put_back_into_a_manifest_is_detected(completed, tmp_path):
    home, receipt, _ = completed
    store, version = tampered_store(home, tmp_path, receipt)
    manifest = json.loads((version / MANIFEST).read_text())
    manifest["content_hashes"].append(receipt["request"]["sample_hashes"][0])
    (version / MANIFEST).write_text(json.dumps(manifest))
    code, output = verify(tmp_path, receipt, "--store", store)
    shard = receipt["shards"][0]["shard"]
    assert code == 1 and failed(output) == [
        f"shard {shard}: no version on disk trained on a forgotten sample",
        f"shard {shard}: trained-on Merkle root"]


def test_another_owners_texts_do_not_match(completed, tmp_path):
    home, receipt, _ = completed
    texts = tmp_path / "other.jsonl"
    texts.write_text("".join(json.dumps(asdict(s)) + "\n" for s in PEOPLE
                             if s.owner == "person-0001"))
    code, output = verify(tmp_path, receipt, "--store", home / "apa", "--texts", texts)
    assert code == 1 and failed(output) == ["texts: keyed hashes named by the receipt",
                                            "texts: owner hash"]


def test_an_empty_texts_file_proves_nothing(completed, tmp_path):
    home, receipt, _ = completed
    (tmp_path / "empty.jsonl").write_text("")
    code, output = verify(tmp_path, receipt, "--store", home / "apa", "--texts",
                          tmp_path / "empty.jsonl")
    assert code == 1 and failed(output) == ["texts: keyed hashes named by the receipt",
                                            "texts: owner hash"]


def test_bad_arguments_are_usage_errors_that_say_what_to_change(completed, tmp_path):
    home, receipt, texts = completed
    code, message = verify(tmp_path, receipt)
    assert code == 2 and "--key" in message
    code, message = verify(tmp_path, receipt, "--key", tmp_path / "key.json", "--texts", texts)
    assert code == 2 and "--texts needs --store" in message
    code, message = verify(tmp_path, {"not": "a receipt"}, "--store", home / "apa")
    assert code == 2 and "not a Lethe receipt" in message
    outside = json.loads(json.dumps(receipt))
    outside["shards"][0]["folder"] = "../../.."  # a crafted receipt never steers the verifier
    code, message = verify(tmp_path, outside, "--store", home / "apa")
    assert code == 2 and "folder" in message
