"""The forget worker as `lethe serve` runs it: a process of its own, started again whenever it
dies, and reported by /health.

The worker is `python -m serving.forget.worker --config - --parent PID`, its config (API and
admin keys, the store URL and its password included) written to its stdin, a pipe: no file holds
it, and each restart gets it again from the server's memory. The worker asks the kernel to kill
it when the server dies (Linux PR_SET_PDEATHSIG). When it exits, for whatever reason, it is started
again after 1 s, then twice as long each time it dies again soon after a start, at most
`max_wait` apart; while it is down /health answers 503, so an orchestrator sees that forget
requests are not completing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time

import yaml

from ..launch import stop_process
from .queue import backoff

log = logging.getLogger("lethe.supervisor")
STABLE_SECONDS = 60.0  # a worker that ran this long before dying starts the backoff afresh


class WorkerSupervisor:
    def __init__(self, config: dict, max_wait: float):
        """`config`: the worker's, as `load_config` reads it (secrets included)."""
        self._config = yaml.safe_dump(config).encode()
        self.max_wait = max_wait
        self.process: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        log.info("starting the forget worker")
        # No preexec_fn: Python code between fork and exec in a process with threads (the
        # guard's, onnxruntime's, the tokenizers' pool) can deadlock on a lock one of them held at
        # the fork (a restarted server hung so, its worker never exec'd). The worker asks the
        # kernel itself to kill it with its parent (--parent).
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.forget.worker", "--config", "-",
             "--parent", str(os.getpid())], stdin=subprocess.PIPE)
        try:  # a few KiB, which the pipe's buffer (64 KiB) takes whole: no wait for the worker
            self.process.stdin.write(self._config)
            self.process.stdin.close()
        except BrokenPipeError:  # the worker died at once: `watch` starts it again
            log.error("the forget worker exited before it read its config")

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
