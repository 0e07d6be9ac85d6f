"""APA: shard adapters, their training data and lineage, aggregation.

Public surface: a `ShardStore` (create, train, forget_samples, receipt, resolve, release) and
the pieces it is made of, each usable alone; every error derives from `AdapterError`. The
database (SQLite, PostgreSQL) and key-ring (crypto-shredding) helpers are public because the
server's own stores (the forget queue) keep the same durability and privacy rules; durable
files and keyed hashes are base's.
"""

from .database import (Database, DatabaseError, database_schemes, finish_purges, open_database,
                       register_database)
from .errors import AdapterError
from .keyring import KeyRing, KeyRingError
from .lineage import Lineage, LineageError, UnknownSampleError
from .losses import LossTableError
from .mixture import Mixture, MixtureCache, MixtureError, combine, mixture_name
from .partition import (PARTITIONERS, PartitionError, partition, partitioner_names,
                        register_partitioner)
from .registry import AdapterRegistry, RegistryError, Version
from .route import SCHEMES, RouteConfig, RouteError, register_scheme, route, scheme_names
from .samples import Sample, SampleFormatError, read_samples, write_samples
from .store import EmbedFn, ShardResult, ShardStore
from .synth import synth_people
from .train import LORA_TARGET_MODULES, TrainConfig, TrainingError, train_adapter

__all__ = [
    "LORA_TARGET_MODULES", "PARTITIONERS", "SCHEMES", "AdapterError", "AdapterRegistry",
    "Database", "DatabaseError", "EmbedFn", "KeyRing", "KeyRingError", "Lineage", "LineageError",
    "LossTableError", "Mixture", "MixtureCache", "MixtureError", "PartitionError", "RegistryError",
    "RouteConfig", "RouteError", "Sample", "SampleFormatError", "ShardResult", "ShardStore",
    "TrainConfig", "TrainingError", "UnknownSampleError", "Version", "combine", "database_schemes",
    "finish_purges", "mixture_name", "open_database", "partition", "partitioner_names",
    "read_samples", "register_database", "register_partitioner", "register_scheme", "route",
    "scheme_names", "synth_people", "train_adapter", "write_samples",
]
