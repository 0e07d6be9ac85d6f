"""Zeroth-order tuning of the corruption (ECO's sigma search, done with nevergrad).

The model never changes; only the corruption's variant, strength sigma and width k are searched,
so that the model's score on the forget set under corruption matches the score of a reference model
that never saw the forget data (the exact-unlearned shard mixture, or a given value):

    objective(c) = |score_forget(c) - target| + penalty * max(0, score_retain(none) - score_retain(c))

The second term prefers, among corruptions that reach the target, one that leaves the model able
to answer at all: retain prompts under the same corruption should lose as little as possible.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

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


@dataclass
class TuneResult:
    corruption: Corruption
    target: float
    score_before: float  # forget score without corruption
    score_after: float
    objective_before: float
    objective_after: float
    evaluations: list[dict] = field(default_factory=list)


def tune(score: Callable[[Corruption | None], float], target: float, *,
         retain: Callable[[Corruption | None], float] | None, penalty: float, names: list[str],
         dim: int, sigma_range: tuple[float, float], budget: int, seed: int,
         log: Callable[[dict], None] | None = None) -> TuneResult:
    """Search corruptions (variant in names, sigma in sigma_range, k in 1..dim) with nevergrad's
    NGOpt for `budget` evaluations of `score` (and `retain`); returns the best one evaluated."""
    import nevergrad as ng

    retain_clean = retain(None) if retain is not None else 0.0

    def objective(c: Corruption | None) -> tuple[float, float]:
        value = score(c)
        damage = max(0.0, retain_clean - retain(c)) if retain is not None and c else 0.0
        total = abs(value - target) + penalty * damage
        return value, total if math.isfinite(total) else NON_FINITE

    score_before, objective_before = objective(None)
    space = ng.p.Instrumentation(
        name=ng.p.Choice(names),
        sigma=ng.p.Log(lower=sigma_range[0], upper=sigma_range[1]),
        k=ng.p.Log(lower=1, upper=dim).set_integer_casting())
    space.random_state = np.random.RandomState(seed)
    optimizer = ng.optimizers.NGOpt(parametrization=space, budget=budget)
    best = (objective_before, None, score_before)
    evaluations = []
    for step in range(1, budget + 1):
        candidate = optimizer.ask()
        params = candidate.kwargs
        corruption = Corruption(params["name"], sigma=params["sigma"] if uses_sigma(params["name"])
                                else 0.0, k=int(params["k"]))
        value, total = objective(corruption)
        optimizer.tell(candidate, total)
        record = {"step": step, **asdict(corruption), "score": value, "objective": total}
        evaluations.append(record)
        if log is not None:
            log(record)
        if total < best[0]:
            best = (total, corruption, value)
    if best[1] is None:
        raise GuardError(f"no corruption in {budget} evaluations beat no corruption "
                         f"(objective {objective_before:.4f}); raise the budget or check the target")
    return TuneResult(best[1], target, score_before, best[2], objective_before, best[0], evaluations)


def save_corruption(root: Path, result: TuneResult, provenance: dict) -> Path:
    path = Path(root) / CORRUPTION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"corruption": asdict(result.corruption), "created_at": time.time(),
              "tuning": {k: v for k, v in asdict(result).items() if k != "corruption"}, **provenance}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
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
