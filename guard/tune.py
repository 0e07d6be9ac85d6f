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
from typing import Callable, Literal

import numpy as np
import torch

from .errors import GuardError
from .corrupt import Corruption, request_seed, uses_sigma
from .mask import chat_prompt
from .prompts import Item

ScoreKind = Literal["probability", "truth_ratio"]
CORRUPTION_FILE = "corruption.json"
NON_FINITE = 1e6  # objective told to the optimizer for a point whose score is not finite


def answer_logprobs(model, tokenizer, pairs: list[tuple[str, str]], corruption: Corruption | None,
                    batch_size: int = 8) -> np.ndarray:
    """(N,) mean log-probability per answer token of each (prompt, answer), the prompt's user
    tokens corrupted as the server would corrupt them (seeded by the prompt's text)."""
    embedding = model.get_input_embeddings()
    out = []
    with torch.inference_mode():
        for i in range(0, len(pairs), batch_size):
            rows = []  # (embeds (T, D), first answer position, answer ids)
            for prompt, answer in pairs[i:i + batch_size]:
                user = [{"role": "user", "content": prompt}]
                ids, mask = chat_prompt(tokenizer, user)
                text = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
                full = tokenizer.apply_chat_template(
                    user + [{"role": "assistant", "content": answer}], tokenize=False)
                answer_ids = tokenizer(full[len(text):], add_special_tokens=False).input_ids
                prompt_embeds = embedding(torch.tensor(ids))  # (Tp, D)
                if corruption is not None:
                    prompt_embeds = corruption(prompt_embeds, mask, request_seed(prompt))
                embeds = torch.cat([prompt_embeds, embedding(torch.tensor(answer_ids))])  # (T, D)
                rows.append((embeds, len(ids), answer_ids))
            width = max(len(e) for e, _, _ in rows)
            batch = torch.zeros(len(rows), width, rows[0][0].shape[1])  # (B, T, D), right-padded
            attention = torch.zeros(len(rows), width, dtype=torch.long)  # (B, T)
            for b, (embeds, _, _) in enumerate(rows):
                batch[b, :len(embeds)], attention[b, :len(embeds)] = embeds, 1
            logprobs = model(inputs_embeds=batch, attention_mask=attention).logits.float() \
                .log_softmax(-1)  # (B, T, V)
            for b, (_, start, answer_ids) in enumerate(rows):
                # the token at position t is predicted at t - 1
                picked = logprobs[b, start - 1:start - 1 + len(answer_ids)] \
                    .gather(1, torch.tensor(answer_ids)[:, None])  # (Ta, 1)
                out.append(picked.mean().item())
    return np.array(out)


def forget_score(kind: ScoreKind, model, tokenizer, items: list[Item],
                 corruption: Corruption | None) -> float:
    """probability: mean per-token log-probability of the answers (TOFU's "probability", in log).
    truth_ratio: mean over items of P(perturbed) / P(paraphrased), per-token normalised (TOFU)."""
    if kind == "probability":
        missing = [i.prompt for i in items if not i.answer]
        if missing:
            raise GuardError(f"{len(missing)} forget items have no answer to score, e.g. {missing[0]!r}")
        return float(answer_logprobs(model, tokenizer, [(i.prompt, i.answer) for i in items],
                                     corruption).mean())
    if kind == "truth_ratio":
        if any(not i.paraphrased_answer or not i.perturbed_answers for i in items):
            raise GuardError("truth_ratio needs paraphrased_answer and perturbed_answer on every "
                             "item (TOFU's *_perturbed.json files)")
        para = answer_logprobs(model, tokenizer, [(i.prompt, i.paraphrased_answer) for i in items],
                               corruption)
        pairs = [(i.prompt, a) for i in items for a in i.perturbed_answers]
        pert = iter(answer_logprobs(model, tokenizer, pairs, corruption))
        ratios = [math.exp(np.mean([next(pert) for _ in i.perturbed_answers]) - p)
                  for i, p in zip(items, para)]
        return float(np.mean(ratios))
    raise GuardError(f"unknown score {kind!r}; known: probability, truth_ratio")


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
