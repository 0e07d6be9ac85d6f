"""transformers: the reference engine.

One worker thread decodes; the event loop only moves deltas. Requests waiting when a batch starts
are decoded together (static batching, up to max_num_seqs sequences): prompts are left-padded and
each row keeps its own sampling parameters, seed and LoRA adapter with its own per-rank scales
(engines/lora.py: one shrink and one expand per adapter in the batch).
A request that arrives mid-batch waits for that batch to end: simpler than vLLM's continuous
batching, and slower under load (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from base import resolve_device

from .base import Delta, Engine, EngineError, EngineRequest, FinishReason

_STOP = object()


@dataclass
class _Job:
    request: EngineRequest
    emit: Callable[[object], None]  # thread-safe: list[Delta], an Exception, or None (done)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Row:
    """One sequence being decoded: choice `index` of `job`."""

    job: _Job
    index: int
    tokens: list[int] = field(default_factory=list)
    emitted: str = ""
    finish: FinishReason | None = None


class HFEngine(Engine):
    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        self._pending: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="lethe-hf-engine", daemon=True)
        self._worker.start()

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        from .lora import MultiLoRA  # torch: imported with the model, not with the registry

        self._torch = torch
        self.device = resolve_device(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self._base = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=getattr(torch, self.dtype)
        ).to(self.device).eval()
        self._loras = MultiLoRA(self._base, capacity=self.max_loras, max_rank=self.max_lora_rank)
        eos = {self.tokenizer.eos_token_id}
        try:
            gen_eos = GenerationConfig.from_pretrained(self.model_path).eos_token_id
        except OSError:  # no generation_config.json
            gen_eos = None
        eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self._eos = {e for e in eos if e is not None}

    async def generate(self, request: EngineRequest) -> AsyncIterator[list[Delta]]:
        loop = asyncio.get_running_loop()
        out: asyncio.Queue = asyncio.Queue()
        job = _Job(request, emit=lambda item: loop.call_soon_threadsafe(out.put_nowait, item))
        self._pending.put(job)
        try:
            while (item := await out.get()) is not None:
                if isinstance(item, Exception):
                    raise EngineError(f"hf engine failed on {request.request_id}: {item}") from item
                yield item
        finally:
            job.cancelled.set()

    async def evict(self, name: str) -> None:
        await asyncio.to_thread(self._loras.evict, name)  # waits for the batch in progress

    async def check_health(self) -> None:
        if getattr(self, "_worker", None) is None or not self._worker.is_alive():
            raise EngineError("the hf engine's worker thread is not running (see the server log)")

    async def shutdown(self) -> None:
        if getattr(self, "_worker", None) is not None:
            self._pending.put(_STOP)
            await asyncio.to_thread(self._worker.join)
            self._worker = None

    # --- worker thread ---------------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._pending.get()) is not _STOP:
            jobs, rows = [job], job.request.sampling.n
            while rows < self.max_num_seqs:
                try:
                    nxt = self._pending.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._pending.put(_STOP)  # finish this batch, then stop
                    break
                jobs.append(nxt)
                rows += nxt.request.sampling.n
            try:
                with self._torch.inference_mode():
                    self._decode(jobs)
            except Exception as e:  # report to every waiting request; the worker lives on
                for j in jobs:
                    j.emit(e)

    def _decode(self, jobs: list[_Job]) -> None:
        torch = self._torch
        rows = [_Row(job, i) for job in jobs for i in range(job.request.sampling.n)]
        generators = {id(j): _generator(torch, j.request.sampling.seed) for j in jobs}
        with self._loras.batch([r.job.request.lora for r in rows]):  # row b: its request's
            self._decode_rows(jobs, rows, generators)

    def _decode_rows(self, jobs: list[_Job], rows: list[_Row], generators: dict) -> None:
        torch, device = self._torch, self._base.device

        # Prefill: every row as embeddings, left-padded to the longest prompt.
        embed = self._base.get_input_embeddings()
        prompts = [
            r.job.request.prompt_embeds
            if r.job.request.prompt_embeds is not None
            else embed(torch.tensor(r.job.request.prompt_token_ids, device=device))
            for r in rows
        ]  # each [T_i, d]
        B, T, d = len(rows), max(p.shape[0] for p in prompts), prompts[0].shape[1]
        inputs = torch.zeros(B, T, d, dtype=self._base.dtype, device=device)  # [B, T, d]
        mask = torch.zeros(B, T, dtype=torch.long, device=device)  # [B, T], 1 = real token
        for b, p in enumerate(prompts):
            inputs[b, T - p.shape[0]:] = p.to(device, self._base.dtype)
            mask[b, T - p.shape[0]:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]
        out = self._base(
            inputs_embeds=inputs, attention_mask=mask, position_ids=positions, use_cache=True,
        )
        # Tokens are chosen on the CPU, whatever the device: the request's seeded generator is
        # a CPU one, so a seed draws the same numbers on every device (a GPU's draws others).
        cache, logits = out.past_key_values, out.logits[:, -1].cpu()  # logits: [B, V]

        for _ in range(max(j.request.sampling.max_tokens for j in jobs)):
            next_ids = [
                self._sample(logits[b], r.job.request.sampling, generators[id(r.job)])
                for b, r in enumerate(rows)
            ]
            top = [_top_logprobs(logits[b], r.job.request.sampling.logprobs)
                   for b, r in enumerate(rows)]
            for job in jobs:
                deltas = [self._advance(r, t, lp)
                          for r, t, lp in zip(rows, next_ids, top) if r.job is job]
                deltas = [dl for dl in deltas if dl is not None]
                if deltas and not job.cancelled.is_set():
                    job.emit(deltas)
            live = [r for r in rows if r.finish is None and not r.job.cancelled.is_set()]
            if not live:
                break
            step = torch.tensor(next_ids, device=device)[:, None]  # [B, 1]
            mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            out = self._base(
                input_ids=step, attention_mask=mask, position_ids=positions,
                past_key_values=cache, use_cache=True,
            )
            cache, logits = out.past_key_values, out.logits[:, -1].cpu()
        for job in jobs:
            job.emit(None)

    def _sample(self, logits, sampling, generator) -> int:
        torch = self._torch
        if sampling.greedy:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)  # [V]
        if sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # keep the smallest prefix whose mass reaches top_p (always the first token)
            drop = sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p
            sorted_probs[drop] = 0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=generator))

    def _advance(self, row: _Row, token: int, logprobs: dict[int, float]) -> Delta | None:
        """Append a token to a live row; return its new text (None once the row is done)."""
        if row.finish is not None:
            return None
        sampling = row.job.request.sampling
        row.tokens.append(token)
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in sampling.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, row.finish = text[:cut], "stop"
        elif token in self._eos:
            row.finish = "stop"
        elif len(row.tokens) >= sampling.max_tokens:
            row.finish = "length"
        if row.finish is None:
            text = text[: len(text) - _held_back(text, sampling.stop)]
        delta = text[len(row.emitted):]
        row.emitted += delta
        return Delta(row.index, delta, [token], row.finish, [logprobs] if logprobs else [])


def _generator(torch, seed: int | None):
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def _top_logprobs(logits, k: int) -> dict[int, float]:
    """The k most likely next tokens and their log-probabilities, from logits (V,)."""
    if k == 0:
        return {}
    top = logits.float().log_softmax(-1).topk(k)
    return dict(zip(top.indices.tolist(), top.values.tolist()))


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` not to stream yet: a partial UTF-8 character, or a
    prefix of a stop string that the next tokens may complete."""
    hold = 1 if text.endswith("\ufffd") else 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    return hold
