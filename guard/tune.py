"""Zeroth-order tuning of the corruption (ECO's sigma search, done with nevergrad).

The model never changes; only the corruption's variant, strength sigma and width k are searched,
so that the model's scores on the forget set under corruption match the scores of a reference
model that never saw the forget data (the exact-unlearned shard mixture, or given values), on
one metric or several (e.g. truth ratio and ROUGE-L: probability alone over-forgets,
docs/benchmarks.md):

    objective(c) = sum over metrics m of |score_m(c) - target_m|
                   + penalty * max(0, score_retain(none) - score_retain(c))

The second term prefers, among corruptions that reach the target, one that leaves the model able
to answer at all: retain prompts under the same corruption should lose as little as possible.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from base import write_atomic

from .corrupt import Corruption, uses_sigma
from .errors import GuardError
from .metrics import Subject, metric
from .prompts import Item

CORRUPTION_FILE = "corruption.json"
NON_FINITE = 1e6  # objective told to the optimizer for a point whose score is not finite


def forget_score(kind: str, subject: Subject, items: list[Item]) -> float:
    """The mean over `items` of the metric named `kind` (metrics.py: probability, truth_ratio,
    rouge_l, ...) of `subject` (e.g. a ModelSubject: a model under one corruption)."""
    return float(metric(kind)(subject, items).mean())


def forget_scores(kinds: list[str], subject: Subject, items: list[Item]) -> dict[str, float]:
    """{kind: forget_score(kind, ...)} for each metric in `kinds`."""
    return {kind: forget_score(kind, subject, items) for kind in kinds}


@dataclass
class TuneResult:
    corruption: Corruption  # the best corruption evaluated (never "none")
    target: dict[str, float]  # per metric
    score_before: dict[str, float]  # forget scores without corruption
    score_after: dict[str, float]
    objective_before: float
    objective_after: float
    evaluations: list[dict] = field(default_factory=list)


def tune(score: Callable[[Corruption | None], dict[str, float]], target: dict[str, float], *,
         retain: Callable[[Corruption | None], float] | None, penalty: float, names: list[str],
         dim: int, sigma_range: tuple[float, float], budget: int, seed: int,
         k: int | None | Literal["search"] = "search", sigma_init: float | None = None,
         log: Callable[[dict], None] | None = None) -> TuneResult:
    """Search corruptions (variant in names, sigma in sigma_range, k in 1..dim, or the given
    k: None for every dimension) with nevergrad's NGOpt for `budget` evaluations of `score`
    (and `retain`), from sigma_init (None: the middle of the range on a log scale); returns the
    best one evaluated.
    `score` gives a value per metric of `target`. No corruption may score best: when the model
    under corruption is already the reference (a flagged prompt routed around the shards that
    hold its data), the result is still the closest corruption evaluated, and says how far it
    is (objective_after against objective_before)."""
    import nevergrad as ng

    if not target:
        raise GuardError("tuning needs a target for at least one metric")
    retain_clean = retain(None) if retain is not None else 0.0

    def objective(c: Corruption | None) -> tuple[dict[str, float], float]:
        values = score(c)
        if set(values) != set(target):
            raise GuardError(f"the score gave metrics {sorted(values)}, the target has "
                             f"{sorted(target)}")
        damage = max(0.0, retain_clean - retain(c)) if retain is not None and c else 0.0
        total = sum(abs(values[m] - target[m]) for m in target) + penalty * damage
        return values, total if math.isfinite(total) else NON_FINITE

    score_before, objective_before = objective(None)
    searched = {"k": ng.p.Log(lower=1, upper=dim).set_integer_casting()} if k == "search" else {}
    space = ng.p.Instrumentation(
        name=ng.p.Choice(names),
        sigma=ng.p.Log(init=sigma_init, lower=sigma_range[0], upper=sigma_range[1]),
        **searched)
    space.random_state = np.random.RandomState(seed)
    optimizer = ng.optimizers.NGOpt(parametrization=space, budget=budget)
    best = (math.inf, None, {})
    evaluations = []
    for step in range(1, budget + 1):
        candidate = optimizer.ask()
        params = candidate.kwargs
        corruption = Corruption(params["name"], sigma=params["sigma"] if uses_sigma(params["name"])
                                else 0.0, k=int(params["k"]) if k == "search" else k)
        values, total = objective(corruption)
        optimizer.tell(candidate, total)
        record = {"step": step, **asdict(corruption), "scores": values, "objective": total}
        evaluations.append(record)
        if log is not None:
            log(record)
        if total < min(best[0], NON_FINITE):
            best = (total, corruption, values)
    if best[1] is None:
        raise GuardError(f"no corruption in {budget} evaluations gave a finite score")
    return TuneResult(best[1], target, score_before, best[2], objective_before, best[0], evaluations)


def save_corruption(root: Path, result: TuneResult, provenance: dict) -> Path:
    path = Path(root) / CORRUPTION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"corruption": asdict(result.corruption), "created_at": time.time(),
              "tuning": {k: v for k, v in asdict(result).items() if k != "corruption"}, **provenance}
    write_atomic(path, json.dumps(record, indent=2))
    return path


def load_corruption(root: Path) -> Corruption | None:
    """The tuned corruption saved under a guard folder, or None if it was never tuned."""
    path = Path(root) / CORRUPTION_FILE
    if not path.exists():
        return None
    try:
        return Corruption(**json.loads(path.read_text())["corruption"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GuardError(f"{path}: not a tuned corruption record: {e}") from e
