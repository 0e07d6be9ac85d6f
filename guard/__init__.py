"""ECO: prompt embeddings, classifier, exemplar index, corruption, sigma tuning.

Public surface: a `Guard` (check, add_exemplar, retire_exemplar, refit) loaded from a folder
written by `train_guard` + `save_model`, the corruptions and their token masks, and `tune`.
"""

from .classifier import (GuardModel, classifier_names, load_model, register_classifier,
                         save_model)
from .config import CorruptionConfig, GuardConfig, TuneConfig
from .corrupt import (Corruption, CorruptionError, corruption_names, register_corruption,
                      request_seed)
from .embed import SentenceEmbedder, embedder_names, register_embedder
from .errors import GuardError
from .exemplars import ExemplarIndex
from .general import general_prompts
from .guard import Guard, Verdict
from .mask import chat_prompt, token_mask
from .prompts import Item, PromptFileError, read_items, salient_terms, strip_markup
from .train import EmbedFn, train_guard
from .tune import TuneResult, answer_logprobs, forget_score, load_corruption, save_corruption, tune
from .views import views

__all__ = [
    "Corruption", "CorruptionConfig", "CorruptionError", "EmbedFn", "ExemplarIndex", "Guard",
    "GuardConfig", "GuardError", "GuardModel", "Item", "PromptFileError", "SentenceEmbedder",
    "TuneConfig", "TuneResult", "Verdict", "answer_logprobs", "chat_prompt", "classifier_names",
    "corruption_names", "embedder_names", "forget_score", "general_prompts", "load_corruption",
    "load_model", "read_items", "register_classifier", "register_corruption", "register_embedder",
    "request_seed", "salient_terms", "save_corruption", "save_model", "strip_markup", "token_mask",
    "train_guard", "tune", "views",
]
