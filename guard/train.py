"""Train a guard from prompt files: split, embed, fit, calibrate, evaluate on held-out prompts.

Items (a prompt and maybe its answer) are split whole, so an answer never sits on the other side
of the split from its prompt. Of the held-out share, half calibrates the thresholds and half tests
them. Answers of the fitting items are extra examples of their class (augmentation: the answer of
a forget item names the same person and facts as its prompt; +5 points of TPR on TOFU), and the
fitting forget prompts also appear in hostile forms (augment.py: lower case, typos, jailbreak
prefixes, suffixes, wrappers). Calibration and test shares are never augmented.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable

import numpy as np

from .augment import hostile_forms
from .classifier import GuardModel, fit_guard, max_similarity
from .errors import GuardError
from .general import general_prompts
from .prompts import Item, strip_markup
from .screen import leave_one_out_threshold
from .static import StaticEmbedder

EmbedFn = Callable[[list[str]], np.ndarray]  # texts -> (N, D) unit vectors


def items_hash(items: list[Item]) -> str:
    """sha256 of the items' text: the training set's identity in the manifest, not its content."""
    return hashlib.sha256(json.dumps([[i.prompt, i.answer] for i in items]).encode()).hexdigest()


def split_items(items: list[Item], holdout: float, rng: np.random.Generator, what: str
           ) -> tuple[list[Item], list[Item], list[Item]]:
    """(fit, calibration, test) shares of items."""
    order = rng.permutation(len(items))
    held = int(round(holdout * len(items)))
    cal, test = order[:held // 2], order[held // 2:held]
    if len(cal) == 0 or len(test) == 0 or held == len(items):
        raise GuardError(f"{len(items)} {what} prompts are too few to hold out {holdout:.0%} for "
                         "calibration and test and fit on the rest")
    return ([items[i] for i in order[held:]], [items[i] for i in cal], [items[i] for i in test])


def _texts(items: list[Item], with_answers: bool,
           augment: np.random.Generator | None = None) -> list[str]:
    texts = [strip_markup(i.prompt) for i in items]
    if with_answers:
        texts += [strip_markup(i.answer) for i in items if i.answer]
    if augment is not None:
        texts += [form for i in items for form in hostile_forms(strip_markup(i.prompt), augment)]
    return texts


def _vectors(embed: EmbedFn, items: list[Item], with_answers: bool) -> np.ndarray:
    return embed(_texts(items, with_answers))


def train_guard(forget: list[Item], negatives: list[Item], embed: EmbedFn, *, kind: str,
                target_fpr: float, holdout: float, seed: int, embedder: str,
                static: StaticEmbedder | None = None) -> tuple[GuardModel, dict]:
    """Fit and calibrate on `forget` (positives) vs `negatives` plus the generated general
    requests (general.py: a guard trained on forget vs retain alone flagged 8% of questions about
    real authors on TOFU); returns the model and a report with TPR/FPR on the calibration and
    test shares (prompts only). With `static` (static.py), the model also holds the static
    vectors of its fitting positives and their threshold: the first stage's anchors
    (screen.py); without, every piece of a prompt is read by MiniLM."""
    negatives = negatives + [Item(prompt=p) for ps in general_prompts().values() for p in ps]
    rng = np.random.default_rng(seed)
    f_fit, f_cal, f_test = split_items(forget, holdout, rng, "forget")
    n_fit, n_cal, n_test = split_items(negatives, holdout, rng, "negative")
    fit_pos = _texts(f_fit, True, augment=rng)
    model = fit_guard({"fit_pos": embed(fit_pos),
                       "fit_neg": _vectors(embed, n_fit, True),
                       "cal_pos": _vectors(embed, f_cal, False),
                       "cal_neg": _vectors(embed, n_cal, False)},
                      kind=kind, target_fpr=target_fpr, seed=seed)
    screen = {}
    if static is not None:
        # The fitting prompts and answers, not their hostile forms (the first stage scores
        # pieces, which the views have cut wrappers from): (P, d)
        model.vectors["static_pos"] = static(_texts(f_fit, True))
        screen = {"threshold": leave_one_out_threshold(
            [max_similarity(static(_texts(f_cal, False)), model.vectors["static_pos"])]),
            "static": static.provenance}
    report = {"test": model.rates(_vectors(embed, f_test, False), _vectors(embed, n_test, False)),
              "calibration": model.rates(model.vectors["cal_pos"], model.vectors["cal_neg"]),
              "threshold": model.threshold, "support_floor": model.support_floor,
              "exemplar_threshold": model.exemplar_threshold}
    model.manifest = {"embedder": embedder, "holdout": holdout, "metrics": report,
                      "data": {"forget_sha256": items_hash(forget), "forget_items": len(forget),
                               "negatives_sha256": items_hash(negatives),
                               "negative_items": len(negatives)}, "screen": screen}
    return model, report
