"""The plugin's Punica wrapper on CUDA: vLLM's GPU one, with the rank components of every token
scaled between its shrink and its expand (see __init__.py). vLLM imports it by name (the
platform's `get_punica_wrapper`), in its processes only: this module imports vLLM (and its
Triton kernels, so only where there is a GPU).

vLLM's `add_lora_linear` shrinks x into a float32 buffer (slices, tokens, R), then expands it;
here `buffer *= scales[token]` runs between the two, one elementwise multiply, and the Triton
kernels are vLLM's, unchanged. The scales are one device tensor, allocated once at its largest
(max_num_batched_tokens, R) and overwritten in place each step, as vLLM treats its own
token-to-LoRA mapping: CUDA graphs captured for decode read this step's scales."""

from __future__ import annotations

import torch
from vllm.lora.punica_wrapper.punica_gpu import PunicaWrapperGPU

from . import check_lora_config


def apply_scales(buffer: torch.Tensor, scales: torch.Tensor) -> None:
    """buffer (slices, tokens, R) *= scales (>= tokens, >= R) of each token, in place."""
    buffer.mul_(scales[:buffer.size(1), :buffer.size(2)].unsqueeze(0))


class MixturePunicaWrapperGPU(PunicaWrapperGPU):
    lethe_scales = True  # the plugin's own: every LoRA layer applies the request's scales

    def __init__(self, max_num_batched_tokens: int, max_batches: int, device, **kwargs):
        super().__init__(max_num_batched_tokens, max_batches, device, **kwargs)
        check_lora_config(kwargs["lora_config"])
        # until set_scales: no delta (warm-up and graph capture run without requests)
        self._scales = torch.zeros(max_num_batched_tokens, kwargs["lora_config"].max_lora_rank,
                                   dtype=torch.float32, device=device)  # (tokens, R)

    def set_scales(self, scales: torch.Tensor) -> None:
        """(tokens, R) multipliers of each token's rank components this step, copied in place;
        the rows past the step's tokens (a graph's padding) get zero."""
        n = scales.size(0)
        self._scales[:n].copy_(scales, non_blocking=True)
        self._scales[n:].zero_()

    def add_lora_linear(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked,
                        lora_b_stacked, scale: float, output_slices, *, buffer=None,
                        **kwargs) -> None:
        # y: (N, sum(output_slices)), x: (N, in); lora_a_stacked[i]: (slots, 1, R, in)
        r = lora_b_stacked[0].size(-1)
        buffer = torch.empty((len(output_slices), x.size(0), r), dtype=torch.float32,
                             device=x.device)  # zeroed by the shrink
        add_inputs = kwargs.pop("add_inputs", True)
        self.add_shrink(buffer, x, lora_a_stacked, scale, **kwargs)
        apply_scales(buffer, self._scales)
        self.add_expand(y, buffer, lora_b_stacked, output_slices, add_inputs=add_inputs,
                        **kwargs)
