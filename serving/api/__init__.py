"""OpenAI-compatible HTTP API: protocol (wire models), serving (logic), app (routes)."""

from .app import build_app, error_response
from .serving import OpenAIServing

__all__ = ["OpenAIServing", "build_app", "error_response"]
