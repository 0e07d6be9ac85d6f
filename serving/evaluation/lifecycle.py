"""`lethe eval tofu`: the product's own lifecycle on TOFU, every state scored as the field
scores unlearning (guard/metrics.py).

    original   K shard adapters (APA partition, one owner per author) on the forget authors
               and N retained authors, served through the pipeline
    guarded    each forget author forgotten by the code behind POST /v1/forget (ForgetService:
               durable request, exemplars, quarantine by policy), scored before the worker runs,
               on the forget questions (the guard's own exemplars) and on `unseen` forms of
               them that the request never handed the guard (tofu.py)
    quarantined  the same moment, served as S3T-style systems do: every request routed around
               the shards the pending requests hold, no guard, no corruption. Exact from the
               first second (the other shards never saw the forgotten data), at the cost of
               those shards for everybody
    second tier  right after the requests are accepted, the corruption is tuned (nevergrad,
               guard/tune.py) against the mixture without the shards they hold: an exactly-
               unlearned model that exists the moment a request is accepted. Its result says
               which corruption makes a flagged prompt's answers look like that model's
               (`second_tier`), tuned on the tuning authors' questions (tofu.py): never on what
               the guarded phase is scored on
    exact      after the forget worker's round (tombstones, retrain of the affected shards,
               publish) and the server's sync (exemplars retired)
    reference  the same partition without the forget authors, trained from scratch
               (ShardStore.derive): the shards that held a forget author are trained again;
               the others keep the original's adapters, each trained from scratch on the
               same samples with the same seed (training them again gives the same weights,
               tests/adapters/test_store.py; ~6 minutes a shard in the full run).
               `exact_equals_reference`: every shard's version (a hash of its weights) is the
               same in both
    aggregation  APA's Table 1 on TOFU, before any forget: APA's weights (= original), uniform
               weights, one adapter trained on everything, SISA's output ensemble

Per phase: forget quality (KS test of its forget truth ratios against the reference's; on the
unseen forms, `forget_quality_unseen`), model utility (harmonic mean of probability, ROUGE-L and
truth ratio on retain, real authors and world facts), each set's scores, a membership-inference
audit (`membership_auc`: min-k% probability of the forget answers against never-trained
holdout answers, as ROC AUC; 0.5 when the attack cannot tell them apart), the share of each
set's questions the guard flagged, and the share of its scorings an earlier phase had
computed: no computation runs twice (subjects.ServedSubject), so an unflagged question while
requests are pending is the original's, and the reference, when its versions are the exact
state's, is the exact phase's computation over again.

`power`: the evaluation only shows forgetting if the original itself fails it; with forget
quality(original vs reference) above POWER_FQ it has no power, and `goals` calls no phase's
forgetting good (met: null).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from adapters import RouteConfig, ShardStore
from base import Signer, load_secret, resolve_device
from guard import (Corruption, Guard, Item, forget_quality, forget_scores, general_vectors,
                   metric, model_utility, truth_ratio_closer_to_1, truth_ratio_true_better, tune)

from ..config import Config
from ..errors import LetheError
from ..forget import ForgetService, Worker, open_queue
from ..metrics import Metrics
from ..model import input_embeddings, resolve_model, sentence_embedder
from ..pipeline import SIGMA_UNROUTED, build_pipeline, guard_options, served_corruption
from ..shards import create_store
from .subjects import AdapterModel, EnsembleSubject, ServedSubject
from .tofu import TofuData

PHASES = ("original", "guarded", "quarantined", "exact", "reference")
# Above this forget quality of the original against the reference, the forget set does not tell
# a model that learned it from one that never saw it: a run without power.
POWER_FQ = 0.01
# min-k% probability (Shi et al. 2024): the mean of the lowest k of an answer's token log-probs
MIN_K = 0.2
# What else could act on a flagged prompt while its request is pending: the guarded phase's
# forget set scored under each (docs/benchmarks.md, "The whole product on TOFU"), against the
# configured policy.
VARIANTS = {
    # ECO alone, on every shard's weights, at the strength served without the quarantine
    "corruption_only": {"quarantine": "none", "corruption": Corruption(sigma=SIGMA_UNROUTED)},
    "route_around_only": {"corruption": Corruption(sigma=0.0)},  # no noise
    "route_around_sigma_0.1": {"corruption": Corruption(sigma=0.1)},
}
UTILITY_SETS = ("retain", "real_authors", "world_facts")
# What the second tier matches the held-out mixture on: the distribution TOFU's forget quality
# tests (truth ratio) and the answers' form (ROUGE-L). Probability alone over-forgets
# (docs/benchmarks.md).
SECOND_TIER_SCORES = ["truth_ratio", "rouge_l"]


class EvaluationError(LetheError):
    """A phase of the evaluation did not reach the state it measures (e.g. a forget request
    the worker did not complete)."""


class _ScoredOnce:
    """A subject for one set's metrics: each (question, answer) scored once, though several
    metrics ask (the options' probabilities are also the truth ratio's perturbed answers)."""

    def __init__(self, subject):
        self.subject, self.scores = subject, {}

    def logprobs(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        new = [p for p in dict.fromkeys(pairs) if p not in self.scores]
        if new:
            self.scores.update(zip(new, self.subject.logprobs(new)))
        return np.array([self.scores[p] for p in pairs])

    def answers(self, prompts: list[str]) -> list[str]:
        return self.subject.answers(prompts)


FORGET_SETS = ("forget", "unseen")  # about the forget authors: truth ratio "closer to 1"


def score_set(subject, name: str, items: list[Item]) -> tuple[dict, np.ndarray]:
    """({probability, rouge_l, truth_ratio}, truth ratios) of one set. real_authors and
    world_facts are multiple choice: their probability is the answer's share among the options
    (TOFU's normalised probability); the forget sets' truth ratio is TOFU's "closer to 1", over
    their items that have options (a probe with no original question has none)."""
    subject = _ScoredOnce(subject)
    subject.logprobs([(i.prompt, a) for i in items  # every answer of a question in one pass
                      for a in (i.answer, i.paraphrased_answer, *i.perturbed_answers) if a])
    kind = "probability_options" if name in ("real_authors", "world_facts") else "probability"
    ratios = metric("truth_ratio")(subject, [i for i in items
                                             if i.paraphrased_answer and i.perturbed_answers])
    summary = truth_ratio_closer_to_1 if name in FORGET_SETS else truth_ratio_true_better
    scores = {"probability": float(metric(kind)(subject, items).mean()),
              "rouge_l": float(metric("rouge_l")(subject, items).mean()),
              "truth_ratio": summary(ratios) if len(ratios) else None}  # None: no item has options
    return scores, ratios


def membership_auc(subject, members: list[Item], nonmembers: list[Item]) -> float:
    """ROC AUC of the min-k% probability attack (MIN_K) telling `members`' answers (trained
    on) from `nonmembers'` (never): the chance that a member scores above a non-member."""
    from scipy.stats import rankdata

    tokens = subject.token_logprobs([(i.prompt, i.answer) for i in members + nonmembers])
    scores = np.array([np.sort(t.numpy())[:max(1, int(np.ceil(MIN_K * len(t))))].mean()
                       for t in tokens])  # (M + N,)
    ranks = rankdata(scores)  # ties share their mean rank (Mann-Whitney U)
    m, n = len(members), len(nonmembers)
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


def score_subject(subject, sets: dict[str, list[Item]], log) -> tuple[dict, dict]:
    """(a phase's record, the truth ratios of its forget sets by name)."""
    record, forget_ratios, reused = {}, {}, {}
    served = isinstance(subject, ServedSubject)
    for name, items in sets.items():
        if not items:  # e.g. no unseen form of a scored author
            continue
        start, before = time.perf_counter(), Counter(subject.counts) if served else None
        record[name], ratios = score_set(subject, name, items)
        if name in FORGET_SETS:
            forget_ratios[name] = ratios
        if served:
            done = subject.counts - before
            reused[name] = done["reused"] / (done["reused"] + done["computed"])
        log(f"  {name}: {len(items)} questions, " + ", ".join(
            f"{k} {v:.3f}" for k, v in record[name].items()) +
            f" ({time.perf_counter() - start:.0f} s" +
            (f", {reused[name]:.0%} computed before)" if served else ")"))
    if set(UTILITY_SETS) <= set(sets):
        record["model_utility"] = model_utility([record[s][k] for s in UTILITY_SETS
                                                 for k in ("probability", "rouge_l",
                                                           "truth_ratio")])
    if served:
        record["flagged"] = {name: subject.flagged_rate([i.prompt for i in items])
                             for name, items in sets.items() if items}
        record["reused"] = reused
    return record, forget_ratios


class Lifecycle:
    """What every phase shares: the model, tokenizer, embedder, corruption and work folder."""

    def __init__(self, config: Config, work: Path, log=lambda line: print(line, file=sys.stderr)):
        self.config, self.work, self.log = config, Path(work), log
        self.work.mkdir(parents=True, exist_ok=True)
        self.model_path = resolve_model(config.model.source, config.home_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.embed = sentence_embedder(config.guard.embedder, config.cache_dir)
        self.embedding = input_embeddings(self.model_path)  # (V, D)
        # the largest adapter it runs: a stack of every shard (the aggregation's single adapter
        # has one shard's rank)
        self.model = AdapterModel(self.model_path,
                                  max_rank=self.config.shards.count * self.config.train.r,
                                  device=resolve_device(config.model.device))
        self.corruption = served_corruption(config)
        self.noise_key = load_secret(self.work / "secret.key")
        self.computed: dict = {}  # what every served subject computed (ServedSubject)
        self.seconds: dict[str, float] = {}

    def guard(self) -> Guard:
        """A guard with no trained classifier (none is trained on TOFU here): it flags what
        forget requests put in it, by their exemplars and the window head; it also embeds every
        request for routing."""
        return Guard.exemplars_only(self.embed, self.config.guard.exemplar_threshold,
                                    **guard_options(self.config, self.embed))

    def served(self, store: ShardStore, guard: Guard, route: RouteConfig | None = None, *,
               corruption: Corruption | None = None, quarantine: str | None = None
               ) -> ServedSubject:
        """The server's pipeline over `store` (its configured route, mixing, corruption and
        quarantine, unless given)."""
        pipeline = build_pipeline(self.config, self.tokenizer, self.embedding, guard, store,
                                  Metrics(), self.noise_key, route=route,
                                  corruption=corruption or self.corruption, quarantine=quarantine)
        return ServedSubject(self.model, self.tokenizer, pipeline, self.computed)

    def train(self, name: str, store: ShardStore, progress) -> None:
        start = time.perf_counter()
        results = store.train(store.lineage.shard_ids(), progress)
        self.seconds[f"train_{name}"] = round(time.perf_counter() - start, 1)
        trained = [r for r in results if r.steps]
        self.log(f"{name}: trained {len(trained)} shard(s) ({sum(r.steps for r in trained)} "
                 f"steps) in {self.seconds[f'train_{name}']:.0f} s"
                 + (f", {len(results) - len(trained)} already trained on their samples"
                    if len(trained) < len(results) else ""))

    def score(self, name: str, subject, sets: dict[str, list[Item]],
              holdout: list[Item] | None = None):
        """score_subject; with `holdout`, also the membership audit of sets["forget"]."""
        self.log(f"{name}: scoring")
        start = time.perf_counter()
        record, ratios = score_subject(subject, sets, self.log)
        for forms, key in (("forget", "membership_auc"), ("unseen", "membership_auc_unseen")):
            if holdout and sets.get(forms):
                record[key] = membership_auc(subject, sets[forms], holdout)
                self.log(f"  membership AUC {record[key]:.3f} ({len(sets[forms])} {forms} "
                         f"answers against {len(holdout)} holdout answers)")
        self.seconds[f"score_{name}"] = round(time.perf_counter() - start, 1)
        return record, ratios


def run_tofu(config: Config, data: TofuData, work: Path, *, aggregation: bool = False,
             variants: bool = False, tune_items: int = 8, tune_budget: int = 6,
             progress=lambda shard: None, log=lambda line: print(line, file=sys.stderr)) -> dict:
    """Every phase, in the order the product goes through them; the --json record."""
    start = time.perf_counter()
    life = Lifecycle(config, work, log)
    forget_ids = {s.id for s in data.train if s.owner in set(data.forget_owners)}
    store = create_store(config, life.work / "original", data.train, data.validation,
                         embed=life.embed)
    life.train("original", store, progress)
    reference = ShardStore.derive(life.work / "reference", store, forget_ids,
                                  reuse_unchanged=True)
    phases, ratios = {}, {}

    guard = life.guard()
    served = life.served(store, guard)
    phases["original"], ratios["original"] = life.score("original", served, data.sets,
                                                        data.holdout)

    aggregated = (_aggregation(life, store, data, phases["original"], progress)
                  if aggregation else None)

    service = forget_service(config, store, guard, life.embed, life.work)
    queue = service.queue
    started = time.perf_counter()
    requests = [service.submit(owner, None, [])[0] for owner in data.forget_owners]
    life.seconds["forget_accepted"] = round(time.perf_counter() - started, 3)
    guard.settle()  # the window head covers the requests (seconds, in the server's background)
    life.seconds["forget_head_ready"] = round(time.perf_counter() - started, 3)
    phases["guarded"], ratios["guarded"] = life.score("guarded", served, data.sets, data.holdout)
    # no guard (one with no request: it never flags), every request routed around the holds
    phases["quarantined"], ratios["quarantined"] = life.score(
        "quarantined", life.served(store, life.guard(), quarantine="all"), data.sets,
        data.holdout)
    second_tier = (_second_tier(life, store, guard, data.tune, tune_items, tune_budget)
                   if data.tune else None)
    tried = {}
    for name, choice in VARIANTS.items() if variants else ():
        tried[name], ratios[name] = life.score(f"guarded, {name}", life.served(
            store, guard, **choice), {name: data.sets[name] for name in FORGET_SETS})

    worker = Worker.from_config(config, queue, store.root)
    started = time.perf_counter()
    done = []  # a round takes one shard group: authors in different shards take a round each
    while finished := worker.run_once():
        done += finished
    life.seconds["forget_exact"] = round(time.perf_counter() - started, 1)
    if sorted(done) != sorted(r.id for r in requests):
        states = {r.id: queue.get(r.id).state for r in requests}
        raise EvaluationError(f"the forget worker did not complete every request: {states}")
    service.sync()
    served.sweep()
    phases["exact"], ratios["exact"] = life.score("exact", served, data.sets, data.holdout)

    life.train("reference", reference, progress)
    exact_versions = {v.shard: v.id for v in store.current_versions()}
    reference_versions = {v.shard: v.id for v in reference.current_versions()}
    identical = exact_versions == reference_versions
    phases["reference"], ratios["reference"] = life.score(
        "reference", life.served(reference, life.guard()), data.sets, data.holdout)

    for name, record in (*phases.items(), *tried.items()):
        for forms, key in (("forget", "forget_quality"), ("unseen", "forget_quality_unseen")):
            if forms in ratios[name] and len(ratios[name][forms]):
                record[key] = forget_quality(ratios[name][forms], ratios["reference"][forms])
    life.seconds["total"] = round(time.perf_counter() - start, 1)
    return {"phases": phases,
            "power": _power(phases),
            "goals": _goals(phases, identical, aggregated),
            "unseen": {**data.unseen_counts, "scored": len(data.sets["unseen"]),
                       "tuning_authors": data.tune_owners},
            "exact_equals_reference": identical,
            "versions": {"exact": exact_versions, "reference": reference_versions},
            "receipts": [queue.get(r.id).receipt for r in requests],
            "guarded_variants": tried if variants else None,
            "second_tier": second_tier,
            "aggregation": aggregated,
            "seconds": life.seconds}


def forget_service(config: Config, store: ShardStore, guard: Guard, embed, folder: Path
                   ) -> ForgetService:
    """The forget service behind POST /v1/forget over `store`, its queue (and the queue's key)
    in `folder`: a request is durable, guarded by `guard` and its shards held by the configured
    quarantine, as the server does it."""
    queue = open_queue(folder / "forget.db", "NORMAL", folder / "secret.key")
    return ForgetService(queue, store.lineage, guard, general=general_vectors(embed),
                         quarantine=config.forget.quarantine != "none", metrics=Metrics(),
                         receipt_key=Signer.of_store(store.root).record())


def _power(phases: dict) -> dict:
    fq = phases["original"]["forget_quality"]
    return {"fq_original_vs_reference": fq, "threshold": POWER_FQ, "has_power": fq <= POWER_FQ,
            "meaning": "the original fails the forget test: a state that passes it forgot"
            if fq <= POWER_FQ else "NO POWER: the original itself passes the forget test, so "
            "no state's forget quality shows forgetting"}


def _goals(phases: dict, identical: bool, aggregated: dict | None) -> dict:
    """Issue 32's goals, each {"value", "goal", "met"}; met is None for a forgetting goal of a run
    without power (`_power`) and for what was not measured."""
    power = phases["original"]["forget_quality"] <= POWER_FQ
    original, guarded, reference = (phases[p] for p in ("original", "guarded", "reference"))

    def goal(value, target: str, met, forgetting: bool = True) -> dict:
        """`met(value)`: whether it meets the goal, asked only when there is a value to judge."""
        judged = value is not None and (power or not forgetting)
        return {"value": value, "goal": target, "met": bool(met(value)) if judged else None}

    at_least = lambda bound: lambda v: v >= bound  # noqa: E731
    at_most = lambda bound: lambda v: v <= bound  # noqa: E731
    forms = "unseen" if "unseen" in guarded else "forget"  # what the guard was not handed
    auc = {p: phases[p].get("membership_auc") for p in PHASES}
    single = (aggregated or {}).get("single")
    goals = {
        "power: FQ(original vs reference)": goal(
            original["forget_quality"], f"<= {POWER_FQ}", at_most(POWER_FQ), forgetting=False),
        "original: forget ROUGE-L": goal(original["forget"]["rouge_l"], ">= 0.8",
                                         at_least(0.8), forgetting=False),
        "guarded: FQ on unseen forms": goal(guarded.get("forget_quality_unseen"), ">= 0.5",
                                            at_least(0.5)),
        f"guarded: {forms} ROUGE-L gap to the reference": goal(
            abs(guarded[forms]["rouge_l"] - reference[forms]["rouge_l"]), "<= 0.05",
            at_most(0.05)),
        "guarded: MU / original's": goal(
            _ratio(guarded["model_utility"], original["model_utility"]), ">= 0.99",
            at_least(0.99), forgetting=False),
        "exact = reference": goal(identical, "true", bool, forgetting=False),
        "quarantined: MU / original's": goal(
            _ratio(phases["quarantined"]["model_utility"], original["model_utility"]),
            ">= 0.97", at_least(0.97), forgetting=False),
        "membership AUC: original": goal(auc["original"], "well above 0.5 (> 0.6)",
                                         at_least(0.6), forgetting=False),
    }
    for phase in ("guarded", "exact"):
        gap = None if None in (auc[phase], auc["reference"]) else abs(auc[phase] - auc["reference"])
        goals[f"membership AUC: {phase} - reference"] = goal(gap, "<= 0.05", at_most(0.05))
    goals["served mixture: MU / one adapter's"] = goal(
        single and _ratio(original["model_utility"], single["model_utility"]), ">= 0.97",
        at_least(0.97), forgetting=False)
    return goals


def _ratio(a: float, b: float) -> float | None:
    """a / b; None when b is 0 (a model with no utility: nothing to compare with)."""
    return a / b if b > 0 else None


def _second_tier(life: Lifecycle, store: ShardStore, guard: Guard, forget: list[Item],
                 items: int, budget: int) -> dict:
    """Tune the configured corruption's sigma (at its k) against the held-out mixture (a flagged
    prompt routed around the shards of the requests it is about as the configured quarantine
    routes it, every held shard without one; uncorrupted) on `items` of the tuning authors'
    questions `forget` (none of them scored in the guarded phase's unseen forms); scored as
    served. Its sigma is comparable with the served one's, where the search starts."""
    start = time.perf_counter()
    chosen = forget[::max(1, len(forget) // items)][:items]
    name, k = life.corruption.name, life.corruption.k
    quarantine = "flagged" if life.config.forget.quarantine == "none" else None
    held_out = life.served(store, guard, corruption=Corruption(name, 0.0, k),
                           quarantine=quarantine)
    target = forget_scores(SECOND_TIER_SCORES, held_out, chosen)
    lo, hi = life.config.guard.tune.sigma_min, life.config.guard.tune.sigma_max

    def log(record: dict) -> None:
        life.log(f"  second tier {record['step']}: sigma {record['sigma']:.4g} k {record['k']}: "
                 + ", ".join(f"{m} {v:.3f}" for m, v in record["scores"].items())
                 + f", objective {record['objective']:.4f}")

    life.log("second tier: target " + ", ".join(f"{m} {v:.3f}" for m, v in target.items()))
    result = tune(lambda c: forget_scores(SECOND_TIER_SCORES, life.served(
        store, guard, corruption=c or Corruption(name, 0.0, k)), chosen), target,
        retain=None, penalty=0.0, names=[name], dim=life.embedding.shape[1],
        sigma_range=(lo, hi), budget=budget, seed=life.config.guard.seed, k=k,
        sigma_init=min(max(life.corruption.sigma, lo), hi), log=log)
    life.seconds["second_tier"] = round(time.perf_counter() - start, 1)
    return {**asdict(result), "scores": SECOND_TIER_SCORES, "items": len(chosen)}


def _aggregation(life: Lifecycle, store: ShardStore, data: TofuData, served: dict, progress
                 ) -> dict:
    """The served weights (the original phase, `served`) against APA's loss-based attention,
    uniform weights, SISA's output ensemble and one adapter trained on everything: model utility
    and retain ROUGE-L (the retain questions are training questions: how well each recalls)."""
    sets = {name: data.sets[name] for name in UTILITY_SETS}
    scheme = life.config.route.scheme
    single = create_store(life.config, life.work / "single", data.train, data.validation,
                          shards=1, embed=life.embed)
    life.train("single", single, progress)
    records = {f"served ({scheme})": served}
    for other in ("apa", "uniform"):
        if other != scheme:
            records[other] = life.score(other, life.served(store, life.guard(), (
                life.config.route.model_copy(update={"scheme": other}))), sets)[0]
    records["ensemble"] = life.score("ensemble", EnsembleSubject(life.model, life.tokenizer,
                                                                 store), sets)[0]
    records["single"] = life.score("single", life.served(single, life.guard()), sets)[0]
    # Trained on the forget authors, and no forget request will ever reach it: gone now.
    shutil.rmtree(single.root)
    return {name: {"model_utility": r["model_utility"], "retain_rouge_l": r["retain"]["rouge_l"]}
            for name, r in records.items()}
