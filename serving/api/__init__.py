"""OpenAI-compatible HTTP API: protocol (wire models), serving (completions and chat logic, no
web framework), forget (the forget endpoints), errors (the one exception -> HTTP error map),
app (routes)."""

from .app import build_app
from .serving import OpenAIServing

__all__ = ["OpenAIServing", "build_app"]
