"""Device names: checked without torch, resolved to what this machine has, refused with what to
set instead."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from base import DeviceError, LetheError, device_name, resolve_device

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


def test_auto_is_the_gpu_when_torch_sees_one_else_the_cpu():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_a_gpu_this_machine_lacks_is_refused_saying_what_to_set(name):
    with pytest.raises(DeviceError, match=rf"device '{name}': torch .* sees no CUDA GPU here; "
                                          r"use device: cpu or auto") as info:
        resolve_device(name)
    assert isinstance(info.value, LetheError) and info.value.exit_code == 2


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "cpu:0", "mps", ""])
def test_names_that_are_no_device_are_refused_with_the_ones_that_are(name):
    for check in (device_name, resolve_device):
        with pytest.raises(DeviceError, match=rf"unknown device '{name}': use auto, cpu, cuda "
                                              r"or cuda:N"):
            check(name)


def test_checking_a_name_and_importing_base_load_no_torch():
    code = ("import sys, base; base.device_name('cuda:1'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@needs_cuda
def test_a_gpu_gets_the_deterministic_cublas_workspace_that_training_needs():
    assert resolve_device(f"cuda:{torch.cuda.device_count() - 1}").startswith("cuda")
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
    with pytest.raises(DeviceError, match=rf"only {torch.cuda.device_count()} CUDA GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
