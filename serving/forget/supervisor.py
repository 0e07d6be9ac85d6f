"""The forget worker as `lethe serve` runs it: a process of its own, started again whenever it
dies, and reported by /health.

The worker is `python -m serving.forget.worker --config <home>/run/worker-config.yaml` (0600:
it holds the API keys), in a process that the kernel kills when the server dies (Linux
PR_SET_PDEATHSIG). When it exits, for whatever reason, it is started again after 1 s, then twice
as long each time it dies again soon after a start, at most `max_wait` apart; while it is down
/health answers 503, so an orchestrator sees that forget requests are not completing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ..launch import stop_process
from .queue import backoff

log = logging.getLogger("lethe.supervisor")
STABLE_SECONDS = 60.0  # a worker that ran this long before dying starts the backoff afresh


class WorkerSupervisor:
    def __init__(self, config: dict, config_file: Path, max_wait: float):
        self.config_file = Path(config_file)
        self.max_wait = max_wait
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._write_config(config)

    def _write_config(self, config: dict) -> None:
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.touch(mode=0o600)  # it holds the API keys
        self.config_file.chmod(0o600)
        self.config_file.write_text(yaml.safe_dump(config))

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        log.info("starting the forget worker")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.forget.worker", "--config", str(self.config_file)],
            preexec_fn=_die_with_parent)

    async def watch(self) -> None:
        """Start the worker again each time it dies, until cancelled (after `start`)."""
        failures = 0
        while True:
            started = time.monotonic()
            while self.alive:
                await asyncio.sleep(0.2)
            failures = 1 if time.monotonic() - started > STABLE_SECONDS else failures + 1
            wait = backoff(failures, 1.0, self.max_wait)
            log.error("the forget worker exited with %s; starting it again in %.0f s",
                      self.process.returncode, wait)
            await asyncio.sleep(wait)
            self.restarts += 1
            self.start()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def _die_with_parent() -> None:
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
