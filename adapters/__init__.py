"""APA: shard adapters, their training data and lineage, aggregation."""

from .samples import Sample, SampleFormatError, read_samples, write_samples
from .synth import synth_people

__all__ = ["Sample", "SampleFormatError", "read_samples", "synth_people", "write_samples"]
