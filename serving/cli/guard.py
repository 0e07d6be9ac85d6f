"""`lethe guard ...`: train, check, evaluate and tune the prompt guard (ECO)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..errors import UsageError
from .common import add_command, config_of, emit, positive_int, rate, registered


def _guard_dir(args, config) -> Path:
    return Path(args.guard) if getattr(args, "guard", None) else config.guard_dir


def _load_guard(args, config):
    from guard import Guard, load_model

    from ..model import sentence_embedder

    model = load_model(_guard_dir(args, config))  # none there: refused before MiniLM loads (~10 s)
    embed = sentence_embedder(config.guard.embedder, config.cache_dir)
    return Guard(model, embed, static=embed.static())


def cmd_train(args) -> None:
    from guard import read_items, save_model, train_guard

    from ..model import embedder_name, sentence_embedder

    config = config_of(args, **{"guard.target_fpr": args.target_fpr,
                                "guard.classifier": args.classifier})
    start = time.perf_counter()
    forget = read_items(args.forget)
    negatives = [item for path in [args.retain, *args.general] for item in read_items(path)]
    embed = sentence_embedder(config.guard.embedder, config.cache_dir)
    model, report = train_guard(
        forget, negatives, embed, kind=config.guard.classifier,
        target_fpr=config.guard.target_fpr, holdout=config.guard.holdout, seed=config.guard.seed,
        embedder=embedder_name(config.guard.embedder), static=embed.static())
    out = Path(args.out) if args.out else config.guard_dir
    version = save_model(model, out)
    test, cal = report["test"], report["calibration"]
    emit(args, {"out": str(out), "version": version, "classifier": model.kind,
          "target_fpr": model.target_fpr, "tpr": test["tpr"], "fpr": test["fpr"], **report,
          "seconds": round(time.perf_counter() - start, 2)},
         [f"guard {version} ({model.kind}) saved to {out}",
          f"held-out test: TPR {test['tpr']:.3f} on {test['n_positives']} forget prompts, "
          f"FPR {test['fpr']:.3f} on {test['n_negatives']} negatives",
          f"calibration (target FPR {model.target_fpr}): TPR {cal['tpr']:.3f}, FPR {cal['fpr']:.3f}"])


def cmd_check(args) -> None:
    config = config_of(args)
    guard = _load_guard(args, config)
    verdict = guard.check([args.prompt])
    model = guard.model
    emit(args, {"flagged": verdict.flagged, "rule": verdict.rule, "score": verdict.score,
          "threshold": model.threshold, "similarity": verdict.similarity,
          "exemplar_threshold": model.exemplar_threshold, "guard": model.manifest["version"]},
         [f"{'FLAGGED' if verdict.flagged else 'not flagged'}"
          + (f" by the {verdict.rule} rule" if verdict.rule else "")
          + f": score {verdict.score:.4f} (threshold {model.threshold:.4f})"])


def cmd_eval(args) -> None:
    import numpy as np

    from guard import read_items

    config = config_of(args)
    guard = _load_guard(args, config)
    guard.check(["warm-up"])  # first call pays one-off costs (thread pools), not a request's
    outcome = {}
    latencies = []
    for name, path in (("positives", args.positives), ("negatives", args.negatives)):
        flags = []
        for item in read_items(path):
            start = time.perf_counter()
            flags.append(guard.check([item.prompt]).flagged)
            latencies.append((time.perf_counter() - start) * 1000)
        outcome[name] = np.array(flags)
    p50, p99 = np.percentile(latencies, [50, 99])
    payload = {"tpr": float(outcome["positives"].mean()), "fpr": float(outcome["negatives"].mean()),
               "latency_ms_p50": round(float(p50), 3), "latency_ms_p99": round(float(p99), 3),
               "n_positives": len(outcome["positives"]), "n_negatives": len(outcome["negatives"])}
    emit(args, payload, [f"TPR {payload['tpr']:.3f} on {payload['n_positives']} positives, "
                   f"FPR {payload['fpr']:.3f} on {payload['n_negatives']} negatives",
                   f"latency per check: p50 {p50:.1f} ms, p99 {p99:.1f} ms"])


def _model(model_path: Path, adapter: Path | None, device: str):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, torch_device=device)
    return model.eval()


def cmd_tune(args) -> None:
    from transformers import AutoTokenizer

    from base import resolve_device
    from guard import (ModelSubject, corruption_names, forget_score, forget_scores, read_items,
                       save_corruption, tune)

    from ..model import resolve_model

    config = config_of(args)
    settings = config.guard.tune
    kinds = args.score or settings.score
    forget = read_items(args.forget)[:args.forget_items]
    retain = read_items(args.retain)[:settings.retain_items]
    model_path = resolve_model(config.model.source, config.home_dir)
    device = resolve_device(config.model.device)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    try:
        numbers = [float(x) for x in args.reference.split(",")]
    except ValueError:
        numbers = None
    if numbers is not None:
        if len(numbers) != len(kinds):
            raise UsageError(f"--reference gives {len(numbers)} target(s) for {len(kinds)} "
                             f"metric(s) ({', '.join(kinds)}): one number per --score")
        target = dict(zip(kinds, numbers))
        reference = {"target": target}
    else:
        reference_model = _model(model_path, Path(args.reference), device)
        target = forget_scores(kinds, ModelSubject(reference_model, tokenizer), forget)
        reference = {"reference_adapter": str(args.reference), "target": target}
        del reference_model
    model = _model(model_path, args.adapter, device)

    def log(record: dict) -> None:
        print(f"eval {record['step']:>3}: {record['name']} sigma={record['sigma']:.4g} "
              f"k={record['k']} {_scores(record['scores'])} "
              f"objective={record['objective']:.4f}", file=sys.stderr)

    result = tune(lambda c: forget_scores(kinds, ModelSubject(model, tokenizer, c), forget),
                  target,
                  retain=(lambda c: forget_score("probability", ModelSubject(model, tokenizer, c),
                                                 retain))
                  if retain else None,
                  penalty=settings.penalty, names=corruption_names(),
                  dim=model.get_input_embeddings().weight.shape[1],
                  sigma_range=(settings.sigma_min, settings.sigma_max),
                  budget=args.budget or settings.budget, seed=config.guard.seed, log=log)
    out = save_corruption(_guard_dir(args, config), result, {
        "score": kinds, "adapter": str(args.adapter) if args.adapter else None, **reference,
        "forget_items": len(forget), "retain_items": len(retain)})
    c = result.corruption
    worse = result.objective_after >= result.objective_before
    emit(args, {"corruption": {"name": c.name, "sigma": c.sigma, "k": c.k}, "target": target,
          "score": kinds, "score_before": result.score_before, "score_after": result.score_after,
          "objective_before": result.objective_before, "objective_after": result.objective_after,
          "evaluations": len(result.evaluations), "log": result.evaluations, "out": str(out)},
         [f"{c.name} sigma={c.sigma:.4g} k={c.k}: {_scores(result.score_before)} -> "
          f"{_scores(result.score_after)} (target {_scores(target)})",
          f"objective {result.objective_before:.4f} -> {result.objective_after:.4f} in "
          f"{len(result.evaluations)} evaluations; saved to {out}",
          *(["no corruption is closer to the reference than the best one found: the model "
             "under test already answers like it"] if worse else [])])


def _scores(values: dict[str, float]) -> str:
    return " ".join(f"{name}={value:.4f}" for name, value in values.items())


def add_commands(sub) -> None:
    """`lethe guard <train|check|eval|tune>`."""
    group = sub.add_parser("guard", help="the prompt guard (ECO): train, check, eval, tune")
    guard = group.add_subparsers(dest="guard_command", required=True)
    train = add_command(guard, "train", cmd_train, "train and calibrate the guard's classifier")
    train.add_argument("--forget", type=Path, required=True,
                       help="forget prompts: JSONL or JSON with question/prompt (and answer)")
    train.add_argument("--retain", type=Path, required=True, help="retain prompts (negatives)")
    train.add_argument("--general", type=Path, action="append", default=[],
                       help="more general prompts (negatives; repeatable); generated ones "
                            "(guard/general.py) are always added")
    train.add_argument("--target-fpr", type=rate, help="overrides guard.target_fpr")
    train.add_argument("--classifier", help="overrides guard.classifier")
    train.add_argument("--out", type=Path, help="guard folder (default <home>/guard)")

    check = add_command(guard, "check", cmd_check, "is a prompt flagged, and by which rule")
    check.add_argument("prompt")
    check.add_argument("--guard", type=Path, help="guard folder (default <home>/guard)")

    evaluate = add_command(guard, "eval", cmd_eval, "TPR, FPR and latency on prompt files")
    evaluate.add_argument("--guard", type=Path, help="guard folder (default <home>/guard)")
    evaluate.add_argument("--positives", type=Path, required=True)
    evaluate.add_argument("--negatives", type=Path, required=True)

    tune = add_command(guard, "tune", cmd_tune, "tune the corruption against a reference (nevergrad)")
    tune.add_argument("--forget", type=Path, required=True, help="forget items with answers")
    tune.add_argument("--retain", type=Path, required=True, help="retain items with answers")
    tune.add_argument("--reference", required=True,
                      help="adapter folder of a model that never saw the forget data, or the "
                           "target scores themselves (numbers, comma-separated, one per --score)")
    tune.add_argument("--adapter", type=Path, help="adapter of the model under test (default: "
                                                   "the base model)")
    tune.add_argument("--budget", type=positive_int, help="evaluations (overrides guard.tune.budget)")
    tune.add_argument("--score", **registered("guard", "metric_names", "METRIC"), action="append",
                      help="a metric to match the reference on (repeatable; overrides "
                           "guard.tune.score)")
    tune.add_argument("--forget-items", type=positive_int, help="use the first N forget items")
    tune.add_argument("--guard", type=Path, help="guard folder (default <home>/guard)")
