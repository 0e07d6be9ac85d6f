"""Where Lethe's own torch models run (config `model.device`): the hf engine, shard training, the
validation loss table, the evaluation and the corruption's tuning. vLLM chooses its own device.

A device name is checked when the config loads (`device_name`, no torch) and passed down as it
is; what runs torch resolves it where that work starts (`resolve_device`: the hf engine, training,
the loss table), so a process that only reads a store or serves on vLLM never touches CUDA.
"""

from __future__ import annotations

import os
import re

from .errors import LetheError

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
# cuBLAS's fixed workspace, which torch's deterministic mode needs to run cuBLAS at all
# (`torch.use_deterministic_algorithms`: shard training, adapters/train.py).
CUBLAS_WORKSPACE = ":4096:8"


class DeviceError(LetheError, ValueError):
    """A device name that is none of DEVICE_NAMES, or a GPU this machine does not have (exit 2:
    change `model.device`)."""

    exit_code = 2


def device_name(name: str) -> str:
    """`name` if it names a device (auto, cpu, cuda, cuda:N), whether or not this machine has it."""
    if not _DEVICE.fullmatch(name):
        raise DeviceError(f"unknown device {name!r}: use {DEVICE_NAMES}")
    return name


def resolve_device(name: str) -> str:
    """The torch device that `name` means here: auto is cuda when torch sees a GPU, else cpu;
    cuda or cuda:N must be a GPU torch sees (DeviceError otherwise).

    A GPU also gets cuBLAS's deterministic workspace (CUBLAS_WORKSPACE_CONFIG, unless it is set):
    torch reads it once, at the process's first cuBLAS call, so it is set here, before any model
    runs, for the deterministic training that exact unlearning rests on.
    """
    import torch

    device_name(name)
    # device_count() asks NVML and leaves CUDA uninitialised in this process (is_available()
    # does not): a server resolves its device before vLLM forks its engine process, and a
    # child forked after CUDA's initialisation fails.
    count = torch.cuda.device_count()
    if name == "auto":
        name = "cuda" if count else "cpu"
    elif name != "cpu":
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            seen = f"only {count} CUDA GPU(s)" if count else "no CUDA GPU"
            raise DeviceError(f"device {name!r}: torch {torch.__version__} sees {seen} here; "
                              "use device: cpu or auto (config model.device)")
    if name != "cpu":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    return name
