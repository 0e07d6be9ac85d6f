"""Deterministic LoRA training of one shard adapter with peft.

Exact unlearning rests on this being a pure function of (base model, sample set, config, seed):
the samples are sorted by id, the LoRA init and every shuffle draw from a seed fixed per shard, and
torch runs in deterministic mode. Retraining a shard without a sample therefore gives, byte for
byte, the adapter that training from scratch on the remaining samples gives.

Also the loss a trained adapter gives each validation sample (`adapter_losses`), the rows of
APA's loss table (adapters/losses.py): the same response loss that training minimises.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from base import resolve_device

from .config import TrainConfig
from .errors import AdapterError
from .samples import Sample

IGNORE = -100  # label of tokens that carry no loss (the prompt, padding)
# An epoch's samples are shuffled, then sorted by length within windows of this many batches:
# samples of like length share a batch, so less of it is padding (TOFU's training set: 20% of
# its tokens padding in shuffled batches, 3% in these), and which ones do is still random.
LENGTH_WINDOW = 16


class TrainingError(AdapterError, RuntimeError):
    """Training diverged (non-finite loss) or could not start."""


@dataclass(frozen=True)
class TrainStats:
    steps: int
    final_loss: float
    seconds: float


def encode(tokenizer, sample: Sample, max_length: int) -> tuple[list[int], list[int]]:
    """Chat-formatted (input_ids, labels); labels are IGNORE on the prompt."""
    user = [{"role": "user", "content": sample.prompt}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        user + [{"role": "assistant", "content": sample.response}], tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False).input_ids
    ids = (prompt_ids + answer_ids)[-max_length:]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[-max_length:]
    return ids, labels


def pad_token(tokenizer) -> int:
    """The token that pads a batch (it carries no loss): the tokenizer's pad, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask, labels, each (B, T)."""
    width = max(len(ids) for ids, _ in examples)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids, labels in examples:
        pad = width - len(ids)
        batch["input_ids"].append(ids + [pad_id] * pad)
        batch["attention_mask"].append([1] * len(ids) + [0] * pad)
        batch["labels"].append(labels + [IGNORE] * pad)
    return {k: torch.tensor(v) for k, v in batch.items()}


def epoch_batches(lengths: list[int], batch_size: int, generator: torch.Generator
                  ) -> list[list[int]]:
    """One epoch's batches of sample indices: a shuffle, cut into windows of LENGTH_WINDOW
    batches, each sorted by length and cut into batches; the batches in a shuffled order."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    for start in range(0, len(order), batch_size * LENGTH_WINDOW):
        window = sorted(order[start:start + batch_size * LENGTH_WINDOW], key=lengths.__getitem__)
        batches += [window[i:i + batch_size] for i in range(0, len(window), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def response_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """((N,) negative log-likelihood of each response token in `batch`, (N,) its row).

    The LM head runs at those positions alone: over SmolLM2's 49k-token vocabulary it costs a
    fifth of the model at each position, and most of a chat sample's tokens are its prompt.
    """
    hidden = model.get_decoder()(input_ids=batch["input_ids"],
                                 attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]  # (B, T-1): token t+1 is predicted at t
    keep = labels != IGNORE  # (B, T-1)
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])  # (N, V)
    return (torch.nn.functional.cross_entropy(logits.float(), labels[keep], reduction="none"),
            keep.nonzero()[:, 0])


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM")


def train_adapter(model_path: Path, samples: list[Sample], config: TrainConfig, seed: int,
                  out_dir: Path, progress: Callable[[int, int, float], None] | None = None,
                  device: str = "cpu") -> TrainStats:
    """Train one LoRA adapter from scratch on `samples`; write it in peft format to out_dir.

    progress(step, total_steps, loss) is called after each optimizer step. `device`: the device
    it trains on, resolved here (base.resolve_device: on a GPU that also sets up the
    deterministic cuBLAS that training needs). The same inputs give the same adapter on one
    device; another device gives other weights (its kernels round differently).
    """
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    if not samples:
        raise TrainingError("no samples to train on")
    start = time.perf_counter()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        pad_id = pad_token(tokenizer)
        examples = [encode(tokenizer, s, config.max_length) for s in sorted(samples, key=lambda s: s.id)]
        torch.manual_seed(seed)  # LoRA init and dropout masks
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        # The LoRA init draws on the CPU, before the move: the same initial weights on any device.
        model = get_peft_model(model, lora_config(config)).to(resolve_device(device))
        model.train()
        steps_per_epoch = math.ceil(len(examples) / config.batch_size)
        total = config.epochs * steps_per_epoch
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
        schedule = get_linear_schedule_with_warmup(optimizer, min(10, total // 10), total)
        order_rng = torch.Generator().manual_seed(seed)
        lengths = [len(ids) for ids, _ in examples]
        step, loss_value = 0, float("nan")
        while step < total:
            for indices in epoch_batches(lengths, config.batch_size, order_rng):
                batch = collate([examples[j] for j in indices], pad_id)
                loss = response_nll(model, {k: v.to(device) for k, v in batch.items()})[0].mean()
                if not torch.isfinite(loss):
                    raise TrainingError(f"non-finite loss {loss.item()} at step {step + 1}")
                loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step, loss_value = step + 1, loss.item()
                if progress is not None:
                    progress(step, total, loss_value)
                if step == total:
                    break
        if not all(torch.isfinite(p).all() for p in params):
            raise TrainingError("adapter weights are not finite after training")
        model.save_pretrained(out_dir)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return TrainStats(steps=step, final_loss=loss_value, seconds=time.perf_counter() - start)


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
