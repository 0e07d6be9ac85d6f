"""APA: shard adapters, their training data and lineage, aggregation.

Public surface: a `ShardStore` (create, train, forget_samples, weights, mixture) and the pieces it
is made of, each usable alone.
"""

from .lineage import Lineage, LineageError, UnknownSampleError
from .mixture import Mixture, MixtureCache, MixtureError, combine, mixture_name
from .partition import partition, partitioner_names, register_partitioner
from .registry import AdapterRegistry, RegistryError, Version
from .route import RouteConfig, RouteError, register_scheme, route, scheme_names
from .samples import Sample, SampleFormatError, read_samples, write_samples
from .store import EmbedFn, ShardResult, ShardStore
from .synth import synth_people
from .train import LORA_TARGET_MODULES, TrainConfig, TrainingError, train_adapter

__all__ = [
    "AdapterRegistry", "EmbedFn", "LORA_TARGET_MODULES", "Lineage", "LineageError", "Mixture",
    "MixtureCache", "MixtureError", "RegistryError", "RouteConfig", "RouteError", "Sample",
    "SampleFormatError", "ShardResult", "ShardStore", "TrainConfig", "TrainingError",
    "UnknownSampleError", "Version", "combine", "mixture_name", "partition", "partitioner_names", "read_samples",
    "register_partitioner", "register_scheme", "route", "scheme_names", "synth_people",
    "train_adapter", "write_samples",
]
