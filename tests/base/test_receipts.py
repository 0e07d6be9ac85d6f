"""Receipts without a server: the Merkle root, the signature (any change, another key, lax
types), what a receipt or key file must be, and the store checks against a laid-out store."""

from __future__ import annotations

import hashlib
import json

import pytest

from base import (FORMAT, MANIFEST, Receipt, ReceiptError, ReceiptInvalid, RequestEvidence,
                  ShardEvidence, Signer, check_store, merkle_root, read_public_key,
                  verify_signature, version_digest)

HASHES = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(7)]
FORGOTTEN, TRAINED = HASHES[:2], HASHES[2:]


def test_the_merkle_root_is_of_the_set_and_changes_with_any_member():
    root = merkle_root(HASHES)
    assert merkle_root(reversed(HASHES)) == merkle_root(HASHES + HASHES[:2]) == root
    assert all(merkle_root(HASHES[:i] + HASHES[i + 1:]) != root for i in range(len(HASHES)))
    assert merkle_root(HASHES + [hashlib.sha256(b"x").hexdigest()]) != root
    assert merkle_root([]) == hashlib.sha256(b"").hexdigest() != merkle_root(HASHES[:1])


def receipt(**shard) -> Receipt:
    return Receipt(
        format=FORMAT,
        request=RequestEvidence(id="r1", owner_hash="ab" * 32, sample_hashes=FORGOTTEN,
                                prompts=0),
        shards=[ShardEvidence(**{
            "shard": 0, "folder": "adapters/shard-0000", "old_version": "01d0",
            "old_digest": "d0" * 32, "new_version": "0e00", "new_digest": "d1" * 32,
            "samples": 5, "trained_on_root": merkle_root(TRAINED), "forgotten_ids_absent": True,
            "train_seconds": 1.5, **shard})],
        base_model_sha256=None, guard_before=None, guard_after=None, text_purged=True,
        coalesced_with=[], worker="w", completed_at=1.0)


def test_a_signed_receipt_verifies_and_any_change_breaks_it(tmp_path):
    signer = Signer(tmp_path / "receipt.key")
    signed = signer.sign(receipt(old_version="0a1d"))
    verify_signature(Receipt.read(signed.model_dump_json(), "r"), signer.public_key)
    changes = [
        {"text_purged": False}, {"completed_at": 2.0}, {"coalesced_with": ["r2"]},
        {"request": signed.request.model_copy(update={"sample_hashes": HASHES[:1]})},
        {"shards": [signed.shards[0].model_copy(update={"forgotten_ids_absent": False})]},
        {"shards": [signed.shards[0].model_copy(update={"new_digest": "d2" * 32})]},
        {"router_digest": "ee" * 32}, {"signature": None},
    ]
    for change in changes:
        with pytest.raises(ReceiptInvalid):
            verify_signature(signed.model_copy(update=change), signer.public_key)
    with pytest.raises(ReceiptInvalid, match="signing key"):  # another deployment's key
        verify_signature(signed, Signer(tmp_path / "other.key").public_key)
    # The key file is the key: opened again, it signs with the same key.
    assert Signer(tmp_path / "receipt.key").public_key == signer.public_key


def test_the_router_digest_is_signed_and_a_receipt_from_before_it_still_verifies(tmp_path):
    signer = Signer(tmp_path / "receipt.key")
    signed = signer.sign(receipt().model_copy(update={"router_digest": "cc" * 32}))
    verify_signature(Receipt.read(signed.model_dump_json(), "r"), signer.public_key)
    with pytest.raises(ReceiptInvalid):  # dropped
        verify_signature(signed.model_copy(update={"router_digest": None}), signer.public_key)
    older = json.loads(signer.sign(receipt()).model_dump_json())  # signed without the field
    older.pop("router_digest")
    verify_signature(Receipt.read(json.dumps(older), "r"), signer.public_key)


def test_a_receipt_is_read_strictly_and_a_key_as_json_or_hex(tmp_path):
    signer = Signer(tmp_path / "k")
    signed = json.loads(signer.sign(receipt()).model_dump_json())
    shard = signed["shards"][0]
    for text, problem in [
            ("not json", "receipt"), ("{}", "request"),
            (json.dumps({**signed, "note": "added"}), "note"),
            (json.dumps({k: v for k, v in signed.items() if k != "format"}), "format"),
            (json.dumps({**signed, "text_purged": "false"}), "text_purged"),  # no coercion
            (json.dumps({**signed, "shards": [{**shard, "shard": "0"}]}), "shard"),
            (json.dumps({**signed, "shards": [{**shard, "folder": "../../etc"}]}), "folder"),
            (json.dumps({**signed, "shards": [{**shard, "new_version": "/etc"}]}), "version"),
            (json.dumps({**signed, "signature": signed["signature"].upper()}), "signature")]:
        with pytest.raises(ReceiptError, match=problem):
            Receipt.read(text, "r.json")
    record = json.dumps(signer.record())
    assert read_public_key(record, "k") == read_public_key(signer.public_key.hex() + "\n", "k")
    for text in ["", "zz", '{"public_key": "00"}', "[]"]:
        with pytest.raises(ReceiptError, match="public key"):
            read_public_key(text, "key.json")


def version(folder, name: str, hashes, weights: bytes = b"weights"):
    path = folder / name
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(weights)
    (path / MANIFEST).write_text(json.dumps({"content_hashes": hashes}))
    return path


def failed(checks) -> list[str]:
    return [c.what for c in checks if not c.ok]


def test_the_store_checks_catch_a_swapped_adapter_a_hash_put_back_and_versions_kept(tmp_path):
    folder = tmp_path / "adapters" / "shard-0000"
    new = version(folder, "0e00", TRAINED)
    r = receipt(new_digest=version_digest(new))
    assert failed(check_store(r, tmp_path)) == []

    version(folder, "01d0", HASHES)  # the version trained on the forgotten samples, still there
    assert failed(check_store(r, tmp_path)) == [
        "shard 0: old version 01d0 deleted",
        "shard 0: no version on disk trained on a forgotten sample"]
    (folder / "01d0" / MANIFEST).unlink()
    (folder / "01d0" / "adapter_model.safetensors").unlink()
    (folder / "01d0").rmdir()

    mixture = tmp_path / "mixtures" / "replica" / "mix-1"  # a mixture built on it, still cached
    mixture.mkdir(parents=True)
    (mixture / "mixture.json").write_text(json.dumps(
        {"parts": [{"shard": 0, "version": "01d0", "weight": 1.0}]}))
    assert failed(check_store(r, tmp_path)) == ["no cached mixture built on a deleted version"]
    (mixture / "mixture.json").unlink()

    (new / "adapter_model.safetensors").write_bytes(b"other weights")
    assert failed(check_store(r, tmp_path)) == ["shard 0: adapter digest"]
    (new / "adapter_model.safetensors").write_bytes(b"weights")

    (new / MANIFEST).write_text(json.dumps({"content_hashes": HASHES[1:]}))
    assert failed(check_store(r, tmp_path)) == [
        "shard 0: no version on disk trained on a forgotten sample",
        "shard 0: trained-on Merkle root"]
    (new / MANIFEST).write_text("{not json")
    assert failed(check_store(r, tmp_path)) == [
        "shard 0: no version on disk trained on a forgotten sample",
        "shard 0: trained-on Merkle root"]


def test_a_new_version_that_a_later_retrain_replaced_still_verifies(tmp_path):
    folder = tmp_path / "adapters" / "shard-0000"
    version(folder, "1a7e", TRAINED[1:])  # a later forget's version: our new one is gone
    checks = check_store(receipt(new_digest="d1" * 32), tmp_path)
    assert failed(checks) == []
    assert any("superseded" in c.detail for c in checks)
