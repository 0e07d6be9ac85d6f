"""The product scored as the field scores unlearning: `lethe eval tofu` (lifecycle.py) on TOFU's
files (tofu.py), each state seen through the serving pipeline (subjects.py)."""

from base.lazy import lazy_surface

# Lazy: `lethe eval tofu` checks TOFU's files and its arguments (tofu.py) before importing the
# model libraries that the lifecycle needs (~7 s here), so a bad argument is refused at once.
__getattr__, __dir__, __all__ = lazy_surface(__name__, {
    "lifecycle": ["EvaluationError", "PHASES", "run_tofu"],
    "tofu": ["SPLITS", "TofuData", "TofuDataError", "load_tofu"],
})
