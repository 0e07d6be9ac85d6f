"""The guard's typed configuration (the `guard` section of Lethe's config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .classifier import CLASSIFIERS
from .corrupt import CORRUPTIONS
from .embed import EMBEDDERS
from .metrics import METRICS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CorruptionConfig(_Section):
    """The corruption used until `lethe guard tune` has saved a tuned one."""

    name: str = "rand_noise_first_n"  # ECO's default
    # Noise std. SmolLM2's token embeddings have std 0.14 per dimension: sigma 1 drowns the
    # prompt. None: the server chooses by its forget policy (serving/server.py).
    sigma: float | None = Field(default=None, ge=0)
    k: int | None = Field(default=None, gt=0)  # dimensions per token; None: all

    _known = CORRUPTIONS.validator("name")


class TuneConfig(_Section):
    budget: int = Field(default=30, gt=0)  # evaluations; ~2 s each for 40 TOFU items on SmolLM2
    # Metrics (metrics.py) the tuned corruption must match the reference on; one name or a
    # list. probability: computable from any prompt/response file (truth_ratio needs TOFU's
    # paraphrased and perturbed answers); alone it over-forgets (docs/benchmarks.md).
    score: list[str] = ["probability"]
    penalty: float = Field(default=0.1, ge=0)  # weight of retain damage in the objective
    sigma_min: float = Field(default=0.01, gt=0)
    sigma_max: float = Field(default=10.0, gt=0)
    retain_items: int = Field(default=8, ge=0)  # "a few retain prompts" for the damage term

    @field_validator("score", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("score")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        if not names:
            raise ValueError("needs at least one metric")
        return [METRICS.check(name) for name in names]


class GuardConfig(_Section):
    # onnx-int8 | onnx | torch: MiniLM on onnxruntime with int8 weights, 4.5x faster per check
    # than torch at the same TOFU accuracy (bench/bench_guard.py); onnx: torch's vectors to
    # 1e-6, 2.8x faster; torch: the reference.
    embedder: str = "onnx-int8"
    classifier: str = "mlp"  # mlp beat logreg on TOFU by measurement (bench/bench_guard.py)
    # The window head's classifier (guard.py), fitted while forget requests are pending. logreg:
    # on TOFU's 20 forget10 authors (2,321 exemplar rows vs 4,067 negatives) it fits in 2.3 s,
    # the mlp in 128 s (2 vCPU, loaded): the head must cover a request within ~10 s.
    head: str = "logreg"
    target_fpr: float = Field(default=0.01, gt=0, lt=0.5)  # on held-out negatives
    holdout: float = Field(default=0.2, gt=0, lt=1)  # share held out: half calibrates, half tests
    seed: int = 0
    # Similarity to a pending forget request's exemplar above which a prompt is flagged, while
    # no classifier is trained (a trained one carries its calibrated threshold). MiniLM on
    # synthetic people: rewordings of a forgotten question >= 0.84, other people's <= 0.79.
    exemplar_threshold: float = Field(default=0.8, gt=-1, lt=1)
    corruption: CorruptionConfig = CorruptionConfig()
    tune: TuneConfig = TuneConfig()

    _known = CLASSIFIERS.validator("classifier", "head")
    _embedder = EMBEDDERS.validator("embedder")
