"""The plugin's Punica wrapper on CPU: vLLM's CPU one, with a LoRA linear that applies per-token
scales of the rank components and computes each adapter slot's tokens with dense matmuls (see
__init__.py and below). vLLM imports it by name (the platform's `get_punica_wrapper`), in its
processes only: this module imports vLLM.

It dispatches on Python state (the step's slot groups), which vLLM's CPU platform allows: with
LoRA it runs eagerly (no torch.compile, no graphs) and schedules synchronously."""

from __future__ import annotations

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from . import check_lora_config


class MixturePunicaWrapper(PunicaWrapperCPU):
    lethe_scales = True  # the plugin's own: every LoRA layer applies the request's scales

    def __init__(self, max_num_batched_tokens: int, max_batches: int, device, **kwargs):
        super().__init__(max_num_batched_tokens, max_batches, device, **kwargs)
        check_lora_config(kwargs["lora_config"])
        self._rank = kwargs["lora_config"].max_lora_rank
        self._tokens = 0
        self._groups: list[tuple[int, torch.Tensor | None]] = []  # (slot, its rows; None: all)
        self._scales = torch.zeros(0, self._rank)  # (tokens, R)

    # vLLM's CPU ops instead gather each token's own (rank, in) and (out, rank) matrices
    # (bgmv/sgmv in torch), which is what made LoRA cost 3.4x on CPU (bench/). Tokens without
    # an adapter (slot -1) get no delta: vLLM 0.32's CPU ops gave them the adapter in the last
    # slot.

    def update_metadata(self, *args, **kwargs) -> None:
        super().update_metadata(*args, **kwargs)
        indices = self.token_lora_indices  # (tokens,) adapter slot of each token; -1: none
        slots = [s for s in torch.unique(indices).tolist() if s >= 0]
        everyone = bool((indices >= 0).all()) and len(slots) == 1
        self._tokens = indices.numel()
        self._groups = [(s, None if everyone else (indices == s).nonzero().squeeze(1))
                        for s in slots]
        # until set_scales: no delta (warm-up runs call _set_active_loras without it)
        self._scales = torch.zeros(self._tokens, self._rank)

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

    def add_lora_embedding(self, *args, **kwargs) -> None:
        raise NotImplementedError("Lethe's vLLM plugin applies LoRA to linear layers only")

    def add_lora_logits(self, *args, **kwargs) -> None:
        raise NotImplementedError("Lethe's vLLM plugin applies LoRA to linear layers only")
