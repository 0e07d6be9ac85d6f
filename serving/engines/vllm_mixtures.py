"""vLLM plugin: per-request scales of a LoRA's rank components, computed inside the engine.

pyproject.toml registers `register` under vLLM's `vllm.general_plugins` entry point, so vLLM runs
it in every process before the model loads. It changes nothing unless Lethe's vllm engine asked
for it (ENV=1 in the environment the engine processes inherit), and refuses vLLM versions other
than the one it was written against (SUPPORTED): it replaces two internals.

- The model runner's `set_active_loras` (once per step) also builds a (tokens, max_lora_rank)
  scale matrix from each request's `SamplingParams.extra_args[SCALES]` (ones for requests
  without it) and hands it to the Punica wrapper.
- `MixturePunicaWrapper.add_lora_linear` (every LoRA layer, every step) computes, for the tokens
  of each adapter slot in the batch, ((x @ A^T) * scales) @ B^T as two dense matmuls: one shrink
  and one expand per slot in the batch, whatever the requests' scales. vLLM's CPU ops instead
  gather each token's own (rank, in) and (out, rank) matrices (bgmv/sgmv in torch), which is what
  made LoRA cost 3.4x on CPU (bench/). Tokens without an adapter (slot -1) get no delta: vLLM
  0.32's CPU ops gave them the adapter in the last slot.

A stacked adapter of K shards with scales repeating each shard's weight over its ranks is then
exactly the weighted mixture (engines/base.py, LoRA), with nothing built or loaded per request.
"""

from __future__ import annotations

import os

import numpy as np
import torch

ENV = "LETHE_VLLM_MIXTURES"
SCALES = "lethe_lora_scales"  # SamplingParams.extra_args key: one float per rank component
SUPPORTED = ("0.32.",)  # vLLM versions whose model runner and Punica wrapper this patches


class UnsupportedVLLM(RuntimeError):
    """The installed vLLM is not one this plugin was written against."""


def check_version() -> None:
    import vllm

    if not vllm.__version__.startswith(SUPPORTED):
        raise UnsupportedVLLM(
            f"Lethe's in-engine mixtures patch vLLM internals and support vLLM "
            f"{', '.join(v + 'x' for v in SUPPORTED)}; vLLM {vllm.__version__} is installed. "
            "Install a supported vLLM (make setup) or set route.mixing: materialised")


def register() -> None:
    """vLLM's plugin hook: install the patches in this process (idempotent)."""
    if os.environ.get(ENV) != "1":
        return
    check_version()
    from vllm.platforms import current_platform
    from vllm.v1.worker.lora_model_runner_mixin import LoRAModelRunnerMixin

    if not current_platform.is_cpu():
        raise UnsupportedVLLM("Lethe's in-engine mixtures are written for vLLM's CPU platform; "
                              "set route.mixing: materialised on this one")
    type(current_platform).get_punica_wrapper = classmethod(
        lambda cls: f"{__name__}.MixturePunicaWrapper")
    if not getattr(LoRAModelRunnerMixin.set_active_loras, "_lethe", False):
        original = LoRAModelRunnerMixin.set_active_loras

        def set_active_loras(self, input_batch, num_scheduled_tokens, *args, **kwargs):
            original(self, input_batch, num_scheduled_tokens, *args, **kwargs)
            _set_scales(self, input_batch, num_scheduled_tokens)

        set_active_loras._lethe = True
        LoRAModelRunnerMixin.set_active_loras = set_active_loras


def _set_scales(runner, input_batch, num_scheduled_tokens: np.ndarray) -> None:
    """Hand the step's per-token scales, in the batch's token order, to the Punica wrapper."""
    n = input_batch.num_reqs
    rows = np.ones((n, runner.lora_config.max_lora_rank), dtype=np.float32)  # (reqs, R)
    for i, req_id in enumerate(input_batch.req_ids[:n]):
        params = runner.requests[req_id].sampling_params
        scales = (params.extra_args or {}).get(SCALES) if params is not None else None
        if scales is not None:
            rows[i] = 0.0  # ranks beyond the adapter's are padding
            rows[i, :len(scales)] = scales
    per_token = np.repeat(rows, num_scheduled_tokens[:n], axis=0)  # (tokens, R)
    for wrapper in runner.lora_manager._adapter_manager.punica_wrapper_mapping.values():
        wrapper.set_scales(torch.from_numpy(per_token))


def _wrapper_base():
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    return PunicaWrapperCPU


class MixturePunicaWrapper(_wrapper_base()):
    def __init__(self, max_num_batched_tokens: int, max_batches: int, device, **kwargs):
        super().__init__(max_num_batched_tokens, max_batches, device, **kwargs)
        self._rank = kwargs["lora_config"].max_lora_rank
        self._tokens = 0
        self._groups: list[tuple[int, torch.Tensor | None]] = []  # (slot, its rows; None: all)
        self._scales = torch.ones(0, self._rank)  # (tokens, R)

    def update_metadata(self, *args, **kwargs) -> None:
        super().update_metadata(*args, **kwargs)
        indices = self.token_lora_indices  # (tokens,) adapter slot of each token; -1: none
        slots = [s for s in torch.unique(indices).tolist() if s >= 0]
        everyone = bool((indices >= 0).all()) and len(slots) == 1
        self._tokens = indices.numel()
        self._groups = [(s, None if everyone else (indices == s).nonzero().squeeze(1))
                        for s in slots]
        self._scales = torch.ones(self._tokens, self._rank)  # until set_scales (warm-up runs)

    def set_scales(self, scales: torch.Tensor) -> None:
        """(tokens, R) multipliers of each token's rank components, this step."""
        self._scales = scales

    def add_lora_linear(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked,
                        lora_b_stacked, scale: float, output_slices, *, buffer=None,
                        **kwargs) -> None:
        # y: (N, sum(output_slices)), x: (N, in), N >= tokens (padding rows get nothing)
        # lora_a_stacked[i]: (slots, 1, R, in); lora_b_stacked[i]: (slots, 1, out_i, R)
        n = self._tokens
        for slot, rows in self._groups:
            xs = x[:n] if rows is None else x[rows]  # (m, in)
            scales = (self._scales[:n] if rows is None else self._scales[rows])  # (m, R)
            scales = scales.to(x.dtype) * scale
            offset = 0
            for a, b, size in zip(lora_a_stacked, lora_b_stacked, output_slices):
                delta = ((xs @ a[slot, 0].T) * scales) @ b[slot, 0].T  # (m, out_i)
                out = y[:, offset:offset + size]
                if rows is None:
                    out[:n] += delta
                else:
                    out.index_add_(0, rows, delta)
                offset += size
