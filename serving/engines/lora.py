"""LoRA in the hf engine: many adapters in one batch, each row with its own per-rank scales.

Every linear layer an adapter targets is wrapped once (`LoRALinear`); adapters are loaded into
the wrappers by name. For a batch, `MultiLoRA.batch` groups the rows by adapter, and each wrapper
computes, for the rows of adapter a,

    y = W x + B_a @ (scales_row * (A_a @ x))          A_a: (r, in), B_a: (out, r)

one shrink and one expand per adapter in the batch, whatever the rows' scales: requests with
different weights over one stacked adapter of K shards share the matmuls (engines/base.py, LoRA).
The adapter's alpha / r is folded into B at load, so scales of 1 give the adapter as trained
(peft's forward, without dropout).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from safetensors.torch import load_file
from torch import nn

from .base import EngineError, LoRA

PREFIX = "base_model.model."  # peft's prefix of the base model's module names


@dataclass
class _Group:
    name: str  # adapter
    rows: torch.Tensor | None  # (n,) batch rows using it; None: every row
    scales: torch.Tensor  # (n, 1, r) per-row multipliers of its rank components


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, groups: list[_Group]):
        super().__init__()
        self.base = base
        self.adapters: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (A, B)
        self.groups = groups  # shared by every wrapper of a model; set per batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, in)
        y = self.base(x)  # (B, T, out)
        for group in self.groups:
            if group.name not in self.adapters:  # the adapter does not target this layer
                continue
            a, b = self.adapters[group.name]  # (r, in), (out, r)
            if group.rows is None:
                y = y + ((x @ a.T) * group.scales) @ b.T
            else:
                h = (x[group.rows] @ a.T) * group.scales  # (n, T, r)
                y = y.index_add(0, group.rows, h @ b.T)  # (B, T, out)
        return y


class MultiLoRA:
    """The LoRA wrappers of one model and the adapters loaded in them (least recently used
    evicted beyond `capacity`, never one the current batch uses; `evict` drops one by name).
    One thread runs batches; `evict` may come from another and waits for the batch to end."""

    def __init__(self, model: nn.Module, capacity: int, max_rank: int):
        self.model = model
        self.capacity = capacity
        self.max_rank = max_rank
        weight = next(model.parameters())
        self.dtype, self.device = weight.dtype, weight.device  # adapters and scales go to them
        self._groups: list[_Group] = []
        self._layers: dict[str, LoRALinear] = {}  # module name -> its wrapper
        self._ranks: OrderedDict[str, int] = OrderedDict()  # adapter -> rank, newest last
        self._lock = threading.Lock()  # held by a batch, from loading to its end, and by evict

    def load(self, lora: LoRA) -> None:
        if lora.name in self._ranks:
            self._ranks.move_to_end(lora.name)
            return
        try:
            config = json.loads((lora.path / "adapter_config.json").read_text())
            state = load_file(lora.path / "adapter_model.safetensors")
            rank, scaling = config["r"], config["lora_alpha"] / config["r"]
            pairs = {key.removeprefix(PREFIX).split(".lora_A.")[0]:
                     (a, state[key.replace(".lora_A.", ".lora_B.")])
                     for key, a in state.items() if ".lora_A." in key}
        except (OSError, ValueError, KeyError, ZeroDivisionError) as e:
            raise EngineError(f"cannot read LoRA adapter {lora.name} at {lora.path}: {e}") from e
        if config.get("use_dora") or config.get("use_rslora") or config.get("rank_pattern") \
                or config.get("alpha_pattern"):
            raise EngineError(f"LoRA adapter {lora.name}: DoRA, rsLoRA and per-layer ranks are "
                              "not supported by the hf engine")
        if rank > self.max_rank:
            raise EngineError(f"LoRA adapter {lora.name} has rank {rank}, above "
                              f"engine.max_lora_rank ({self.max_rank})")
        layers = {module: self._layer(module, lora.name) for module in pairs}  # may raise
        for module, (a, b) in pairs.items():
            layers[module].adapters[lora.name] = (a.to(self.device, self.dtype),
                                                  (b * scaling).to(self.device, self.dtype))
        self._ranks[lora.name] = rank

    def _layer(self, module: str, adapter: str) -> LoRALinear:
        if module not in self._layers:
            try:
                parent, _, child = module.rpartition(".")
                owner = self.model.get_submodule(parent)
                base = getattr(owner, child)
            except AttributeError as e:
                raise EngineError(f"LoRA adapter {adapter} targets {module}, which the model "
                                  "does not have") from e
            if not isinstance(base, nn.Linear):
                raise EngineError(f"LoRA adapter {adapter} targets {module}, which is not a "
                                  "linear layer")
            self._layers[module] = LoRALinear(base, self._groups)
            setattr(owner, child, self._layers[module])
        return self._layers[module]

    @contextmanager
    def batch(self, loras: list[LoRA | None]):
        """Serve row i of the batches run inside this block with loras[i] (None: none)."""
        with self._lock:
            for lora in loras:
                if lora is not None:
                    self.load(lora)
            self._evict(keep={lora.name for lora in loras if lora is not None})
            by_name: dict[str, list[int]] = {}
            for i, lora in enumerate(loras):
                if lora is not None:
                    by_name.setdefault(lora.name, []).append(i)
            groups = []
            for name, rows in by_name.items():
                scales = torch.stack([self._scales(loras[i]) for i in rows])  # (n, r)
                # (n, 1, r): one per row, all tokens
                scales = scales[:, None, :].to(self.device, self.dtype)
                everyone = len(rows) == len(loras)
                groups.append(_Group(name, None if everyone
                                     else torch.tensor(rows, device=self.device), scales))
            self._groups[:] = groups  # the list every wrapper holds
            try:
                yield
            finally:
                self._groups.clear()

    def _scales(self, lora: LoRA) -> torch.Tensor:
        rank = self._ranks[lora.name]
        if lora.scales is None:
            return torch.ones(rank)
        scales = torch.tensor(lora.scales, dtype=torch.float32)
        if scales.shape != (rank,) or not torch.isfinite(scales).all():
            raise EngineError(f"LoRA adapter {lora.name} has rank {rank}: its scales must be "
                              f"{rank} finite numbers")
        return scales

    def evict(self, name: str) -> None:
        """Drop the adapter `name` (nothing if it is not loaded)."""
        with self._lock:
            self._drop(name)

    def _evict(self, keep: set[str]) -> None:
        for name in list(self._ranks):
            if len(self._ranks) <= self.capacity:
                break
            if name not in keep:
                self._drop(name)

    def _drop(self, name: str) -> None:
        for layer in self._layers.values():
            layer.adapters.pop(name, None)
        self._ranks.pop(name, None)
