"""The validation loss table APA's attention reads: loss of each shard adapter on each sample of
a validation set (consented data that is never forgotten).

Rows are files keyed by (shard version, validation-set hash), so a retrained shard simply has no
row yet and only that row is computed; rows of other shards are reused as they are.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from base import resolve_device, write_atomic

from .errors import AdapterError
from .registry import Version
from .samples import Sample
from .train import collate, encode, pad_token, response_nll


class LossTableError(AdapterError, LookupError):
    """A loss-table row is missing (its version was superseded meanwhile) or not finite."""


def response_losses(model, tokenizer, samples: list[Sample], max_length: int,
                    batch_size: int = 8) -> np.ndarray:
    """(N,) mean negative log-likelihood of each sample's response tokens given its prompt."""
    pad_id = pad_token(tokenizer)
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(samples), batch_size):
            batch = collate([encode(tokenizer, s, max_length) for s in samples[i:i + batch_size]],
                            pad_id)
            nll, rows = response_nll(model, {k: v.to(model.device) for k, v in batch.items()})
            # (N,), (N,) summed per row on the CPU: index_add_ on a GPU adds in no fixed order
            nll, rows = nll.cpu(), rows.cpu()
            size = len(batch["input_ids"])
            total = torch.zeros(size).index_add_(0, rows, nll)  # (B,)
            out.append(total / torch.bincount(rows, minlength=size).clamp(min=1))
    return torch.cat(out).numpy()


def adapter_losses(model_path: Path, adapters: list[Path], samples: list[Sample],
                   max_length: int, device: str = "cpu") -> list[np.ndarray]:
    """response_losses of the base model under each adapter in turn (base loaded once), on the
    torch `device`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
    rows = []
    for path in adapters:
        model = PeftModel.from_pretrained(base, path, torch_device=device)
        rows.append(response_losses(model, tokenizer, samples, max_length))
        base = model.unload()  # the LoRA layers come out; the base weights are untouched
    return rows


class LossTable:
    def __init__(self, root: Path, validation_hash: str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.validation_hash = validation_hash[:16]
        self._rows: dict[str, np.ndarray] = {}  # file name -> row; rows never change once written

    def _path(self, version: Version) -> Path:
        return self.root / f"{version.shard:04d}-{version.id}-{self.validation_hash}.npy"

    def row(self, version: Version) -> np.ndarray | None:
        path = self._path(version)
        if path.name not in self._rows and path.exists():
            self._rows[path.name] = np.load(path)
        return self._rows.get(path.name)

    def put(self, version: Version, losses: np.ndarray) -> None:
        if not np.isfinite(losses).all():
            raise LossTableError(f"validation losses of shard {version.shard} are not finite")
        row = io.BytesIO()
        np.save(row, losses.astype(np.float32))
        write_atomic(self._path(version), row.getvalue())

    def matrix(self, versions: list[Version]) -> np.ndarray:
        """(K, |val|) rows in the order of `versions`; every row must exist."""
        rows = [self.row(v) for v in versions]
        missing = [v.shard for v, r in zip(versions, rows) if r is None]
        if missing:
            raise LossTableError(f"no validation losses for shard(s) {missing} at their current version")
        return np.stack(rows)

    def prune(self, live: list[Version]) -> None:
        keep = {self._path(v).name for v in live}
        for path in self.root.glob("*.npy"):
            if path.name not in keep:
                path.unlink()
                self._rows.pop(path.name, None)
