"""APA: shard adapters, their training data and lineage, aggregation.

Public surface: a `ShardStore` (create, train, forget_samples, receipt, resolve, release) and
the pieces it is made of, each usable alone; every error derives from `AdapterError`. The
databases (SQLite, PostgreSQL), the key ring (crypto-shredding), durable files and keyed hashes
are base's: the server's own stores (the forget queue) keep the same rules.
"""

from base.lazy import lazy_surface

__getattr__, __dir__, __all__ = lazy_surface(__name__, {
    "config": ["LORA_TARGET_MODULES", "TrainConfig"],
    "errors": ["AdapterError"],
    "lineage": ["Lineage", "LineageError", "UnknownSampleError"],
    "losses": ["LossTableError"],
    "mixture": ["Mixture", "MixtureCache", "MixtureError", "combine", "mixture_name"],
    "partition": ["PARTITIONERS", "PartitionError", "partition", "partitioner_names",
                  "register_partitioner"],
    "registry": ["AdapterRegistry", "RegistryError", "Version"],
    "route": ["SCHEMES", "RouteConfig", "RouteError", "register_scheme", "route", "scheme_names"],
    "samples": ["Sample", "SampleFormatError", "read_samples", "write_samples"],
    "store": ["EmbedFn", "ShardResult", "ShardStore"],
    "synth": ["synth_people"],
    "train": ["TrainingError", "train_adapter"],
})
