"""Lethe's own log lines (guard hits, forget requests, the worker's rounds) on stderr."""

from __future__ import annotations

import logging


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
