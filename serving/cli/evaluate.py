"""`lethe eval tofu`: the product's lifecycle on TOFU, every state scored (serving/evaluation)."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from ..errors import UsageError
from .common import add_command, config_of, emit, positive_int, shard_progress

# open-unlearning's published forget10 results for Llama-3.2-1B, as issue 15 quotes them
PUBLISHED = {
    "retain (reference)": {"forget_quality": 1.0, "model_utility": 0.59},
    "NPO": {"forget_quality": 0.02, "model_utility": 0.46},
    "RMU": {"forget_quality": 3e-15, "model_utility": 0.59},
}


def cmd_tofu(args) -> None:
    from ..evaluation import load_tofu

    if args.plot:
        _require_matplotlib()
    for flag, path in (("--out", args.out), ("--plot", args.plot)):
        if path and (path.is_dir() or not path.parent.is_dir()):  # found out after the run
            raise UsageError(f"{flag} {path}: not a file in an existing folder")
    config = config_of(args, **{"shards.count": args.shards, "train.max_steps": args.max_steps,
                                "train.epochs": args.epochs})
    data = load_tofu(args.data, args.forget, args.retain_authors, args.eval_items,
                     probes=args.probe, tune_authors=args.tune_authors)
    if args.work and args.work.exists() and any(args.work.iterdir()):
        raise UsageError(f"--work {args.work} is not empty; the evaluation needs a new folder")
    from ..evaluation import PHASES, run_tofu  # the model libraries: after every check
    from ..pipeline import served_corruption

    work = args.work or Path(tempfile.mkdtemp(prefix="tofu-", dir=_mkdir(config.home_dir / "eval")))
    try:
        result = run_tofu(config, data, work, aggregation=args.aggregation,
                          variants=args.variants, tune_items=args.tune_items,
                          tune_budget=args.tune_budget, progress=shard_progress)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result["config"] = {
        "data": str(args.data), "forget": args.forget, "forget_authors": data.forget_owners,
        "retain_authors": args.retain_authors, "train_samples": len(data.train),
        "probes": [str(p) for p in args.probe], "holdout": len(data.holdout),
        "eval_items": {name: len(items) for name, items in data.sets.items()},
        "shards": config.shards.count, "train": config.train.model_dump(mode="json"),
        "route": config.route.model_dump(mode="json"),
        "corruption": asdict(served_corruption(config)),  # as served: sigma by policy
        "forget_policy": config.forget.model_dump(mode="json", include={"on_flag", "quarantine"}),
        "embedder": config.guard.embedder, "model": config.model.source,
        # teacher-forced log-probabilities, computed as the hf engine does (vLLM gives none)
        "engine": "hf"}
    result["published_forget10_llama_3_2_1b"] = PUBLISHED
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    if args.plot:
        plot(result, args.plot)
    emit(args, result, _table(result, PHASES))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _table(result: dict, phases) -> list[str]:
    power = result["power"]
    lines = [f"{'phase':<11} {'FQ forget':>9} {'FQ unseen':>9} {'MU':>6} {'ROUGE forget':>12} "
             f"{'ROUGE unseen':>12} {'MIA AUC':>7} {'flagged forget/unseen/retain':>28}"]
    for name in phases:
        p = result["phases"][name]
        unseen = p.get("unseen", {}).get("rouge_l")
        flagged = "/".join(f"{p['flagged'][s]:.2f}" if s in p["flagged"] else "-"
                           for s in ("forget", "unseen", "retain"))
        lines.append(f"{name:<11} {p['forget_quality']:>9.3g} "
                     f"{_maybe(p.get('forget_quality_unseen'), '.3g'):>9} "
                     f"{p['model_utility']:>6.3f} {p['forget']['rouge_l']:>12.3f} "
                     f"{_maybe(unseen, '.3f'):>12} {_maybe(p.get('membership_auc'), '.3f'):>7} "
                     f"{flagged:>28}")
    lines.append(f"power: FQ(original vs reference) {power['fq_original_vs_reference']:.3g} "
                 f"(<= {power['threshold']}): {power['meaning']}")
    unseen = result["unseen"]
    lines.append(f"unseen forms: {unseen['scored']} scored ({unseen['paraphrased_questions']} "
                 f"paraphrased questions, {unseen['probes']} probes; left out: "
                 f"{unseen['left_out_tuning_authors']} of the tuning authors "
                 f"{', '.join(unseen['tuning_authors']) or '(none)'}, "
                 f"{unseen['probes_not_forget_authors']} probes not of a forget author)")
    for name, v in (result["guarded_variants"] or {}).items():
        lines.append(f"guarded, {name}: forget quality {v['forget_quality']:.3g}, forget ROUGE-L "
                     f"{v['forget']['rouge_l']:.3f}")
    tier = result["second_tier"]
    if tier:
        c = tier["corruption"]
        lines.append(f"second tier: {c['name']} sigma {c['sigma']:.3g} k {c['k']}: " + ", ".join(
            f"{m} {tier['score_after'][m]:.3f} (held-out {tier['target'][m]:.3f})"
            for m in tier["scores"]) + f" on {tier['items']} of the tuning authors' questions")
    lines.append(f"exact state equals the reference (every shard's version): "
                 f"{result['exact_equals_reference']}")
    for name, record in (result["aggregation"] or {}).items():
        lines.append(f"aggregation {name:<9}: model utility {record['model_utility']:.3f}, "
                     f"retain ROUGE-L {record['retain_rouge_l']:.3f}")
    for name, goal in result["goals"].items():
        met = {True: "met", False: "MISSED", None: "not judged"}[goal["met"]]
        lines.append(f"goal {name} {goal['goal']}: {_maybe(goal['value'], '.3g')} ({met})")
    return lines


def _maybe(value, spec: str) -> str:
    """A number as `spec`; None as "-"; a bool as JSON writes it."""
    if value is None:
        return "-"
    return str(value).lower() if isinstance(value, bool) else format(value, spec)


def _require_matplotlib() -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib: `pip install matplotlib` "
                         "(`make bench-setup` installs it)")


def plot(result: dict, path: Path) -> None:
    """Forget quality (log scale) against model utility, one point per phase, as open-unlearning
    plots methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, p in result["phases"].items():
        ax.scatter(p["model_utility"], max(p["forget_quality"], 1e-20), s=60, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("model utility")
    ax.set_ylabel("forget quality (KS p-value vs reference)")
    c = result["config"]
    ax.set_title(f"TOFU {c['forget']}, {c['retain_authors']} retained authors, "
                 f"K={c['shards']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_commands(sub) -> None:
    group = sub.add_parser("eval", help="score the product's lifecycle on a benchmark")
    evaluations = group.add_subparsers(dest="benchmark", required=True)
    tofu = add_command(evaluations, "tofu", cmd_tofu,
                       "TOFU: original, guarded, exact and reference states side by side")
    tofu.add_argument("--data", type=Path, required=True, help="TOFU's folder (full.json, ...)")
    tofu.add_argument("--forget", default="forget10", choices=["forget01", "forget05", "forget10"])
    tofu.add_argument("--retain-authors", type=positive_int, default=20,
                      help="other authors trained on besides the forget authors (default 20)")
    tofu.add_argument("--probe", type=Path, action="append", default=[],
                      help="JSONL of other forms of forget questions the guarded phase is "
                           "also scored on: question, answer, and author (TOFU's index, "
                           "0-199) or original_question; rows of other authors are counted "
                           "and ignored (repeatable)")
    tofu.add_argument("--tune-authors", type=int, default=1,
                      help="forget authors the second tier tunes the corruption on; their "
                           "other forms are not scored (default 1; 0: no second tier)")
    tofu.add_argument("--shards", type=positive_int, help="overrides shards.count")
    tofu.add_argument("--max-steps", type=positive_int, help="overrides train.max_steps")
    tofu.add_argument("--epochs", type=positive_int, help="overrides train.epochs")
    # ~4 s per question on 2 vCPUs (probability, 6 truth-ratio answers, a greedy answer): 20
    # per set keeps a phase under 7 minutes there; TOFU itself scores every question.
    tofu.add_argument("--eval-items", type=positive_int, default=20,
                      help="score the first N questions of retain, real authors and world "
                           "facts (default: 20; the forget set is always whole)")
    tofu.add_argument("--aggregation", action="store_true",
                      help="also compare APA's aggregation with one adapter trained on "
                           "everything, uniform weights and SISA's ensemble (long: the "
                           "ensemble scores every question once per shard)")
    tofu.add_argument("--variants", action="store_true",
                      help="also score the forget set, while the request is pending, under "
                           "other choices of what acts on a flagged prompt (corruption only, "
                           "routing around only, routing around with sigma 0.1)")
    # ~1 minute per evaluation of 8 questions on 2 vCPUs (a truth ratio and a greedy answer each)
    tofu.add_argument("--tune-items", type=positive_int, default=8,
                      help="questions the second tier tunes the corruption on (default 8, "
                           "spread over the tuning authors' questions)")
    tofu.add_argument("--tune-budget", type=positive_int, default=6,
                      help="the second tier's evaluations (nevergrad; default 6)")
    tofu.add_argument("--work", type=Path, help="keep the stores here (a new folder); "
                                                "default: a temporary one, deleted")
    tofu.add_argument("--out", type=Path, help="also write the JSON record here")
    tofu.add_argument("--plot", type=Path, help="PNG: forget quality vs model utility")
