"""ECO: prompt embeddings, classifier, exemplar index, corruption, sigma tuning.

Public surface: a `Guard` (check, add_exemplar, retire_exemplar, settle) loaded from a folder
written by `train_guard` + `save_model`, the corruptions and their token masks, `tune`, and the
unlearning metrics (TOFU's, by name).
"""

from base.lazy import lazy_surface

__getattr__, __dir__, __all__ = lazy_surface(__name__, {
    "classifier": ["GuardModel", "classifier_names", "load_model", "register_classifier",
                   "save_model", "trained_version"],
    "config": ["CorruptionConfig", "GuardConfig", "TuneConfig"],
    "corrupt": ["Corruption", "CorruptionError", "corruption_names", "register_corruption",
                "request_seed"],
    "embed": ["SentenceEmbedder", "embedder_names", "register_embedder"],
    "errors": ["GuardError", "GuardNameError"],
    "exemplars": ["ExemplarIndex"],
    "general": ["general_prompts", "general_vectors"],
    "guard": ["Guard", "Verdict"],
    "mask": ["chat_prompt", "token_mask"],
    "metrics": ["MetricError", "Subject", "forget_quality", "metric", "metric_names",
                "model_utility", "register_metric", "rouge_l_recall", "truth_ratio_closer_to_1",
                "truth_ratio_true_better"],
    "prompts": ["Item", "PromptFileError", "read_items", "strip_markup"],
    "static": ["StaticEmbedder"],
    "subject": ["ANSWER_TOKENS", "ModelSubject", "answer_ids", "by_question", "greedy_ids",
                "token_logprobs"],
    "train": ["EmbedFn", "train_guard"],
    "tune": ["TuneResult", "forget_score", "forget_scores", "load_corruption", "save_corruption",
             "tune"],
    "views": ["views"],
})
