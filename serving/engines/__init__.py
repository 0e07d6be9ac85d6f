"""Inference engines behind one contract (base.py), chosen by name from config."""

from .base import (GREEDY_BELOW, Delta, Engine, EngineError, EngineRequest, LoRA, LoRAResolver,
                   Sampling)
from .hf import HFEngine
from .registry import ENGINES, UnknownEngineError, engine_class, engine_names, register_engine
from .vllm import VLLMEngine

register_engine(name="hf", impl_cls=HFEngine)
register_engine(name="vllm", impl_cls=VLLMEngine)

__all__ = [
    "ENGINES",
    "GREEDY_BELOW",
    "Delta",
    "Engine",
    "EngineError",
    "EngineRequest",
    "HFEngine",
    "LoRA",
    "LoRAResolver",
    "Sampling",
    "UnknownEngineError",
    "VLLMEngine",
    "engine_class",
    "engine_names",
    "register_engine",
]
