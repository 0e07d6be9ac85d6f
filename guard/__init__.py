"""ECO: prompt embeddings, classifier, exemplar index, corruption, sigma tuning.

Public surface: a `Guard` (check, add_exemplar, retire_exemplar, settle) loaded from a folder
written by `train_guard` + `save_model`, the corruptions and their token masks, `tune`, and the
unlearning metrics (TOFU's, by name).
"""

from .classifier import (GuardModel, classifier_names, load_model, register_classifier,
                         save_model, trained_version)
from .config import CorruptionConfig, GuardConfig, TuneConfig
from .corrupt import (Corruption, CorruptionError, corruption_names, register_corruption,
                      request_seed)
from .embed import SentenceEmbedder, embedder_names, register_embedder
from .errors import GuardError, GuardNameError
from .exemplars import ExemplarIndex
from .general import general_prompts
from .guard import Guard, Verdict
from .mask import chat_prompt, token_mask
from .prompts import Item, PromptFileError, read_items, strip_markup
from .train import EmbedFn, train_guard
from .metrics import (ANSWER_TOKENS, MetricError, ModelSubject, Subject, answer_ids,
                      by_question, forget_quality, greedy_ids, metric, metric_names,
                      model_utility, register_metric, rouge_l_recall, token_logprobs,
                      truth_ratio_closer_to_1, truth_ratio_true_better)
from .tune import (TuneResult, forget_score, forget_scores, load_corruption,
                   save_corruption, tune)
from .views import views

__all__ = [
    "ANSWER_TOKENS", "Corruption", "CorruptionConfig", "CorruptionError", "EmbedFn",
    "ExemplarIndex", "Guard", "GuardConfig", "GuardError", "GuardModel", "GuardNameError", "Item",
    "MetricError", "ModelSubject", "PromptFileError", "SentenceEmbedder", "Subject", "TuneConfig",
    "TuneResult", "Verdict", "answer_ids", "by_question", "chat_prompt", "classifier_names",
    "corruption_names", "embedder_names", "forget_quality", "forget_score", "forget_scores",
    "general_prompts", "greedy_ids", "load_corruption", "load_model", "metric", "metric_names",
    "model_utility", "read_items", "register_classifier", "register_corruption",
    "register_embedder", "register_metric", "request_seed", "rouge_l_recall", "save_corruption",
    "save_model", "strip_markup", "token_logprobs", "token_mask", "train_guard", "trained_version",
    "truth_ratio_closer_to_1", "truth_ratio_true_better", "tune", "views",
]
