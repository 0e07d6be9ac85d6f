"""vLLM plugin: per-request scales of a LoRA's rank components, computed inside the engine.

pyproject.toml registers `register` under vLLM's `vllm.general_plugins` entry point, so vLLM runs
it in every process before the model loads. It changes nothing unless Lethe's vllm engine asked
for it (ENV=1 in the environment the engine processes inherit), and refuses vLLM versions other
than the one it was written against (SUPPORTED): it replaces two internals.

- The model runner's `set_active_loras` (once per step) also builds a (tokens, max_lora_rank)
  scale matrix from each request's `SamplingParams.extra_args[SCALES]` (ones for requests
  without it) and hands it to the Punica wrapper.
- `punica.MixturePunicaWrapper.add_lora_linear` (every LoRA layer, every step) computes, for the
  tokens of each adapter slot in the batch, ((x @ A^T) * scales) @ B^T as two dense matmuls:
  one shrink and one expand per slot in the batch, whatever the requests' scales. vLLM's CPU ops
  instead
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
            "Install a supported vLLM (make setup) or set engine.name: hf")


def register() -> None:
    """vLLM's plugin hook: install the patches in this process (idempotent)."""
    if os.environ.get(ENV) != "1":
        return
    check_version()
    import vllm.envs as envs
    from vllm.platforms import current_platform
    from vllm.v1.worker.lora_model_runner_mixin import LoRAModelRunnerMixin

    if not current_platform.is_cpu():
        raise UnsupportedVLLM("Lethe's vLLM plugin is written for vLLM's CPU platform (its "
                              "Punica wrapper); set engine.name: hf on this one")
    if envs.VLLM_USE_V2_MODEL_RUNNER:  # it never calls set_active_loras
        raise UnsupportedVLLM("Lethe's vLLM plugin patches vLLM's V1 model runner; unset "
                              "VLLM_USE_V2_MODEL_RUNNER")
    from vllm.v1.worker.worker_base import WorkerBase

    type(current_platform).get_punica_wrapper = classmethod(
        lambda cls: f"{__name__}.punica.MixturePunicaWrapper")
    WorkerBase.lethe_plugin_active = _active
    if not getattr(LoRAModelRunnerMixin.set_active_loras, "_lethe", False):
        original = LoRAModelRunnerMixin.set_active_loras

        def set_active_loras(self, input_batch, num_scheduled_tokens, *args, **kwargs):
            original(self, input_batch, num_scheduled_tokens, *args, **kwargs)
            _set_scales(self, input_batch, num_scheduled_tokens)

        set_active_loras._lethe = True
        LoRAModelRunnerMixin.set_active_loras = set_active_loras


def _active(worker) -> bool:
    """In the engine's worker (collective_rpc): is every LoRA computed by this plugin?"""
    from .punica import MixturePunicaWrapper

    runner = worker.model_runner
    return (getattr(type(runner).set_active_loras, "_lethe", False)
            and all(isinstance(w, MixturePunicaWrapper) for w in _wrappers(runner)))


def _wrappers(runner) -> list:
    """The model's Punica wrappers (one for a text model: the language model's)."""
    return list(runner.lora_manager._adapter_manager.punica_wrapper_mapping.values())


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
    for wrapper in _wrappers(runner):
        wrapper.set_scales(torch.from_numpy(per_token))
