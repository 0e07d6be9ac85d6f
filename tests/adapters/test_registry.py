import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from adapters import AdapterRegistry, RegistryError


def stage(registry, staged, value: float) -> None:
    save_file({"base_model.model.x.lora_A.weight": torch.full((2, 3), value)},
              staged / "adapter_model.safetensors")
    (staged / "adapter_config.json").write_text(json.dumps({"r": 2}))


def store(registry, value: float, sample_ids=("a", "b"), created_at=0.0):
    with registry.staging() as staged:
        stage(registry, staged, value)
        return registry.store(0, staged, {"sample_ids": list(sample_ids), "created_at": created_at})


def test_versions_are_content_addressed_and_immutable(tmp_path):
    registry = AdapterRegistry(tmp_path)
    v1 = store(registry, 1.0)
    v2 = store(registry, 2.0, created_at=1.0)
    again = store(registry, 1.0, created_at=2.0)
    assert v1.id != v2.id and again == v1 == registry.version(0, v1.id)
    assert v1.manifest["version"] == v1.id and v1.manifest["shard"] == 0
    assert sorted(os.listdir(tmp_path / ".staging")) == []


def test_a_crash_while_writing_leaves_the_old_version_whole(tmp_path):
    registry = AdapterRegistry(tmp_path)
    old = store(registry, 1.0)
    # A writer SIGKILLed halfway through staging an adapter.
    child = textwrap.dedent(f"""
        import os, signal
        from adapters import AdapterRegistry
        registry = AdapterRegistry({str(tmp_path)!r})
        with registry.staging() as staged:
            with open(staged / "adapter_model.safetensors", "wb") as f:
                f.write(b"half an adapter")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", child], cwd=os.getcwd())
    assert proc.returncode == -signal.SIGKILL
    assert len([p for p in (tmp_path / ".staging").iterdir() if p.is_dir()]) == 1  # debris...
    reopened = AdapterRegistry(tmp_path)
    assert list((tmp_path / ".staging").iterdir()) == []  # ...and swept on open
    assert [v.id for v in reopened.versions(0)] == [old.id]


def test_staged_adapter_without_weights_is_refused(tmp_path):
    registry = AdapterRegistry(tmp_path)
    with registry.staging() as staged, pytest.raises(RegistryError, match="adapter_model"):
        registry.store(0, staged, {"sample_ids": []})


def test_garbage_collection_deletes_versions_trained_on_forgotten_data(tmp_path):
    registry = AdapterRegistry(tmp_path)
    tainted = store(registry, 1.0, sample_ids=["a", "x"], created_at=0.0)
    clean_old = store(registry, 2.0, sample_ids=["a"], created_at=1.0)
    clean = store(registry, 3.0, sample_ids=["a"], created_at=2.0)
    current = store(registry, 4.0, sample_ids=["a"], created_at=3.0)
    deleted = registry.collect_garbage(0, keep=1, forgotten={"x"}, current=current.id)
    assert {v.id for v in deleted} == {tainted.id, clean_old.id}
    assert [v.id for v in registry.versions(0)] == [clean.id, current.id]
    assert not tainted.path.exists()


def test_opening_the_registry_keeps_a_live_writers_staging(tmp_path):
    registry = AdapterRegistry(tmp_path)
    with registry.staging() as staged:
        stage(registry, staged, 1.0)
        AdapterRegistry(tmp_path)  # another process opening the same registry meanwhile
        assert staged.exists()
        assert registry.store(0, staged, {"sample_ids": [], "created_at": 0.0}).path.exists()
