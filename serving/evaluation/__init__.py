"""The product scored as the field scores unlearning: `lethe eval tofu` (lifecycle.py) on TOFU's
files (tofu.py), each state seen through the serving pipeline (subjects.py)."""

from .lifecycle import PHASES, EvaluationError, run_tofu
from .tofu import SPLITS, TofuData, TofuDataError, load_tofu

__all__ = ["EvaluationError", "PHASES", "SPLITS", "TofuData", "TofuDataError", "load_tofu",
           "run_tofu"]
