"""Mixture adapters: one LoRA equal to a weighted sum of shard adapters, exactly.

For every LoRA layer, shard k contributes w_k * s_k * B_k @ A_k (s_k = alpha_k / r_k). Stacking
the factors (peft's `add_weighted_adapter(..., combination_type="cat")`)

    A = [A_1; A_2; ...]                      (sum r_k, in)
    B = [w_1 s_1 B_1, w_2 s_2 B_2, ...]      (out, sum r_k)

gives B @ A = sum_k w_k s_k B_k A_k with no approximation; the mixture has rank sum r_k and
alpha = rank (scaling 1). It is written in peft format, so any engine loads it as one LoRA.

With every w_k = 1 it is the *stack* of the shards: an engine that scales each rank component
per request (engines/base.py, LoRA.scales) serves every weighting of the same shard versions from
that one adapter, with the weights as scales; nothing is built per weight vector.

Mixtures are cached on disk under a name that hashes their (shard, version, weight) parts: a name
is never reused for other weights (vLLM serves stale weights for a reused name, DESIGN.md).
Engines read a mixture's files when they schedule the request, so the process that hands a
mixture to an engine pins it until the request ends: eviction and `sweep` skip pinned mixtures.
Pins live in one process, so each serving process caches in a folder of its own,
`<mixtures>/<name>/`, whose lock file it holds (shared) while it lives: a server's sweep never
touches the folder of another live process (another replica on the same store), and cleans the
superseded mixtures of a folder nobody holds any more (a replica that died or left).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from base import fsync_tree, is_locked, shared_lock

from .errors import AdapterError
from .registry import CONFIG, WEIGHTS, Version

if TYPE_CHECKING:
    import torch


class MixtureError(AdapterError, RuntimeError):
    """Shard adapters that cannot be combined, or a combination that is not finite."""


@dataclass(frozen=True)
class Mixture:
    name: str
    path: Path
    built: bool  # built by this call (a cache miss); False: found in the cache
    # of a stack: the request's weight of each rank component (shard k's weight over its r_k)
    scales: tuple[float, ...] | None = None


def mixture_name(parts: list[tuple[Version, float]]) -> str:
    key = json.dumps(sorted((v.shard, v.id, round(w, 6)) for v, w in parts))
    return "mix-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def combine(parts: list[tuple[Version, float]]) -> tuple[dict[str, torch.Tensor], dict]:
    """Cat-combine weighted shard adapters: (state dict, peft adapter config) of the mixture."""
    # torch here, not at the top: a store opened to read (routing, `lethe shards`) never combines
    import torch
    from safetensors.torch import load_file

    if not parts:
        raise MixtureError("a mixture needs at least one shard adapter")
    configs = [json.loads((v.path / CONFIG).read_text()) for v, _ in parts]
    states = [load_file(v.path / WEIGHTS) for v, _ in parts]
    keys = set(states[0])
    if any(set(s) != keys for s in states) or any(
            set(c["target_modules"]) != set(configs[0]["target_modules"]) for c in configs):
        raise MixtureError("shard adapters differ in their LoRA layers; cannot combine them")
    mixed = {}
    for key in sorted(keys):
        if ".lora_A." in key:
            mixed[key] = torch.cat([s[key] for s in states], dim=0)  # (sum r, in)
        elif ".lora_B." in key:
            mixed[key] = torch.cat([
                (w * c["lora_alpha"] / c["r"]) * s[key]  # (out, r_k)
                for (_, w), c, s in zip(parts, configs, states)], dim=1)  # (out, sum r)
        else:
            raise MixtureError(f"unexpected tensor {key} in a LoRA adapter")
        if not torch.isfinite(mixed[key]).all():
            raise MixtureError(f"mixture tensor {key} is not finite")
    rank = sum(c["r"] for c in configs)
    config = {**configs[0], "r": rank, "lora_alpha": rank, "lora_dropout": 0.0,
              "rank_pattern": {}, "alpha_pattern": {}}
    return mixed, config


class MixtureCache:
    """Mixtures on disk in `<parent>/<name>/`, built on first use, least recently used evicted
    beyond `capacity`."""

    def __init__(self, parent: Path, name: str, capacity: int = 64):
        self.parent = Path(parent)
        self.root = self.parent / name
        self.capacity = capacity
        self.root.mkdir(parents=True, exist_ok=True)
        self._alive = shared_lock(self.parent / f"{name}.lock")  # held until this is collected
        self._pins: Counter[str] = Counter()  # mixture name -> requests in flight using it
        self._pins_lock = threading.Lock()

    def pin(self, name: str) -> None:
        with self._pins_lock:
            self._pins[name] += 1

    def unpin(self, name: str) -> None:
        with self._pins_lock:
            self._pins[name] -= 1
            if self._pins[name] <= 0:
                del self._pins[name]

    def _pinned(self) -> set[str]:
        with self._pins_lock:
            return set(self._pins)

    def get(self, parts: list[tuple[Version, float]]) -> Mixture:
        name = mixture_name(parts)
        path = self.root / name
        built = not path.exists()
        if built:
            self._build(parts, path)
            self._evict()
        else:
            os.utime(path)  # recency for LRU
        return Mixture(name, path, built)

    def _build(self, parts: list[tuple[Version, float]], path: Path) -> None:
        from safetensors.torch import save_file

        state, config = combine(parts)
        tmp = self.root / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            save_file(state, tmp / WEIGHTS)
            (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
            (tmp / "mixture.json").write_text(json.dumps({
                "parts": [{"shard": v.shard, "version": v.id, "weight": w} for v, w in parts],
                "created_at": time.time()}, indent=2))
            fsync_tree(tmp)
            os.rename(tmp, path)
        except OSError as e:
            # Built meanwhile by another process: the same weights, by its name.
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def entries(self) -> list[Path]:
        return sorted((p for p in self.root.glob("mix-*")), key=lambda p: p.stat().st_mtime)

    def _evict(self) -> None:
        pinned = self._pinned()
        for path in self.entries()[:-self.capacity]:
            if path.name not in pinned:
                shutil.rmtree(path, ignore_errors=True)

    def sweep(self, current: dict[int, str]) -> list[str]:
        """Delete every unpinned mixture built on a version that is not current (`current`:
        shard -> version id): superseded weights, possibly of forgotten data; in this cache's
        folder and in the folders no live process holds. Returns their names."""
        folders = [self.root, self.parent] + [  # the parent: mixtures of the old flat layout
            p for p in self.parent.iterdir()
            if p.is_dir() and p != self.root and not is_locked(p.with_suffix(".lock"))]
        pinned, dropped = self._pinned(), []
        for folder in folders:
            for path in folder.glob("mix-*"):
                try:
                    parts = json.loads((path / "mixture.json").read_text())["parts"]
                except FileNotFoundError:  # evicted meanwhile
                    continue
                stale = any(current.get(p["shard"]) != p["version"] for p in parts)
                if stale and not (folder == self.root and path.name in pinned):
                    shutil.rmtree(path, ignore_errors=True)
                    dropped.append(path.name)
        return sorted(dropped)
