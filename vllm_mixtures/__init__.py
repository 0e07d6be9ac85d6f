"""vLLM plugin: per-request scales of a LoRA's rank components, computed inside the engine.

pyproject.toml registers `register` under vLLM's `vllm.general_plugins` entry point, so vLLM runs
it in every process of the environment before the model loads. So this package imports nothing
of Lethe and nothing vLLM does not (numpy, torch), and it changes nothing unless Lethe's vllm
engine asked for it (ENV=1 in the environment the engine processes inherit: `route.mixing:
in-engine`; materialised mixtures need no plugin). It refuses vLLM versions other than the one
it was written against (SUPPORTED, the pin of pyproject.toml's vllm extras): it replaces two
internals.

- The model runner's `set_active_loras` (once per step) also builds a (tokens, max_lora_rank)
  scale matrix from each request's `SamplingParams.extra_args[SCALES]` (`scale_rows`) and hands
  it to the Punica wrapper (`set_scales`).
- The platform's Punica wrapper applies the scales in every LoRA layer, every step:
  punica_cpu.py on CPU (dense matmuls per adapter slot), punica_gpu.py on CUDA (vLLM's Triton
  shrink and expand unchanged, the scales multiplied into the buffer between them).

A stacked adapter of K shards with scales repeating each shard's weight over its ranks is then
exactly the weighted mixture (serving/engines/base.py, LoRA), with nothing built or loaded per
request.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

ENV = "LETHE_VLLM_MIXTURES"
NAME = "lethe_mixtures"  # the entry point's name in pyproject.toml, what VLLM_PLUGINS must list
SCALES = "lethe_lora_scales"  # SamplingParams.extra_args key: one float per rank component
SUPPORTED = ("0.32.",)  # vLLM versions whose model runner and Punica wrappers this patches
# The platform -> its wrapper (module of this package, class), named for vLLM to import.
WRAPPERS = {"cpu": ("punica_cpu", "MixturePunicaWrapper"),
            "cuda": ("punica_gpu", "MixturePunicaWrapperGPU")}


class UnsupportedVLLM(RuntimeError):
    """The installed vLLM, or its platform, is not one this plugin was written against."""


def check_version(version: str) -> None:
    if not version.startswith(SUPPORTED):
        raise UnsupportedVLLM(
            f"Lethe's in-engine mixtures patch vLLM internals and support vLLM "
            f"{', '.join(v + 'x' for v in SUPPORTED)}; vLLM {version} is installed. Install a "
            "supported vLLM (make setup), or set route.mixing: materialised or engine.name: hf")


def wrapper_for(platform: str) -> str:
    """The qualified name of the Punica wrapper for vLLM's platform `platform` ('cpu', 'cuda')."""
    if platform not in WRAPPERS:
        raise UnsupportedVLLM(
            f"Lethe's in-engine mixtures run on vLLM's {' and '.join(WRAPPERS)} platforms, not "
            f"{platform}; set route.mixing: materialised or engine.name: hf")
    module, cls = WRAPPERS[platform]
    return f"{__name__}.{module}.{cls}"


def check_lora_config(lora_config) -> None:
    """What both wrappers refuse: fully sharded LoRA layers call add_shrink and add_expand
    themselves, around the wrapper's add_lora_linear, so their ranks would go unscaled."""
    if lora_config.fully_sharded_loras:
        raise UnsupportedVLLM("Lethe's vLLM plugin does not support fully sharded LoRA: unset "
                              "fully_sharded_loras")


def scale_rows(scales: Sequence[Sequence[float] | None], tokens: Sequence[int], rank: int
               ) -> np.ndarray:
    """The step's (sum(tokens), rank) float32 scale matrix, in the batch's token order: request
    i's `scales[i]` repeated over its `tokens[i]` tokens this step, zeros past its length (the
    stack's padding ranks); a request without scales (None) gets ones: its adapter as it is."""
    rows = np.ones((len(scales), rank), dtype=np.float32)  # (requests, R)
    for i, values in enumerate(scales):
        if values is not None:
            rows[i] = 0.0
            rows[i, :len(values)] = values
    return np.repeat(rows, np.asarray(tokens, dtype=np.int64), axis=0)  # (tokens, R)


def loads_in_vllm() -> bool:
    """Will vLLM's processes started from this environment run `register`? As vLLM decides
    (vllm/plugins: its general plugins' entry points, filtered by VLLM_PLUGINS when set)."""
    from importlib.metadata import entry_points

    import vllm.envs as envs
    from vllm.plugins import DEFAULT_PLUGINS_GROUP

    allowed = envs.VLLM_PLUGINS
    return (any(p.name == NAME for p in entry_points(group=DEFAULT_PLUGINS_GROUP))
            and (allowed is None or NAME in allowed))


def register() -> None:
    """vLLM's plugin hook: install the patches in this process (idempotent)."""
    if os.environ.get(ENV) != "1":
        return
    import vllm
    import vllm.envs as envs
    from vllm.platforms import current_platform
    from vllm.v1.worker.lora_model_runner_mixin import LoRAModelRunnerMixin
    from vllm.v1.worker.worker_base import WorkerBase

    check_version(vllm.__version__)
    wrapper = wrapper_for(current_platform.device_type)
    if envs.VLLM_USE_V2_MODEL_RUNNER:  # it never calls set_active_loras
        raise UnsupportedVLLM("Lethe's vLLM plugin patches vLLM's V1 model runner; unset "
                              "VLLM_USE_V2_MODEL_RUNNER")
    type(current_platform).get_punica_wrapper = classmethod(lambda cls: wrapper)
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
    runner = worker.model_runner
    return (getattr(type(runner).set_active_loras, "_lethe", False)
            and all(getattr(w, "lethe_scales", False) for w in _wrappers(runner)))


def _wrappers(runner) -> list:
    """The model's Punica wrappers (one for a text model: the language model's)."""
    return list(runner.lora_manager._adapter_manager.punica_wrapper_mapping.values())


def _set_scales(runner, input_batch, num_scheduled_tokens: np.ndarray) -> None:
    """Hand the step's per-token scales, in the batch's token order, to the Punica wrappers."""
    import torch

    n = input_batch.num_reqs
    scales = []
    for req_id in input_batch.req_ids[:n]:
        params = runner.requests[req_id].sampling_params
        scales.append((params.extra_args or {}).get(SCALES) if params is not None else None)
    per_token = torch.from_numpy(scale_rows(scales, num_scheduled_tokens[:n],
                                            runner.lora_config.max_lora_rank))
    for wrapper in _wrappers(runner):
        wrapper.set_scales(per_token)
