"""Run `lethe serve` as a child process (`lethe demo`, tests, benchmarks), and stop a child."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml


class ServerProcess:
    """`lethe serve` with `config` (a dict of config keys) on a free local port.

    Blocks until GET /health answers; its output goes to `<workdir>/server.log`.
    """

    def __init__(self, config: dict, workdir: Path, ready_timeout: float = 300.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config_file = workdir / "config.yaml"
        config_file.write_text(yaml.safe_dump(config))
        self.log = workdir / "server.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "serving.cli", "serve", "--config", str(config_file),
                 "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout:.0f}s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text()[-chars:]

    def client(self, api_key: str = "none", asynchronous: bool = False):
        import openai

        cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
        return cls(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=300)

    def stop(self) -> None:
        stop_process(self.proc)


def free_port() -> int:
    """A free local port below the kernel's ephemeral range. The server binds it only once its
    engine has started (~40 s on vLLM), and a port from the range was taken meanwhile by another
    socket bound to port 0, as vLLM's engines bind theirs (make test, 2026-12-05: "address
    already in use"); the kernel never hands out one below the range."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux: IANA's dynamic range starts there
        low = 49152
    rng = random.SystemRandom()
    for _ in range(100):
        port = rng.randrange(max(1024, low - 16384), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free local port below {low}")


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it is still running after `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
