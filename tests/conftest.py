import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see DESIGN.md
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.tiny_model import build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def lethe_home(tmp_path_factory) -> Path:
    """Data directory for the session. LETHE_TEST_HOME reuses a prepared model across runs."""
    reuse = os.environ.get("LETHE_TEST_HOME")
    return Path(reuse) if reuse else tmp_path_factory.mktemp("lethe-home")


@pytest.fixture(scope="session")
def real_model_dir(lethe_home) -> Path:
    from serving.model import prepare_smollm2

    return prepare_smollm2(lethe_home)


class Server:
    """`lethe serve` in a subprocess on a free local port, stopped when the fixture ends."""

    def __init__(self, config: dict, home: Path, tmp: Path):
        import socket
        import subprocess
        import sys

        import yaml

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config_file = tmp / "config.yaml"
        config_file.write_text(yaml.safe_dump({"home": str(home), **config}))
        self.log = tmp / "server.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "serve", "--config", str(config_file),
             "--port", str(self.port)],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 300.0) -> None:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def client(self, api_key: str = "none"):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120)

    def stop(self) -> None:
        import subprocess

        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def start_server(tmp_path_factory, lethe_home):
    """Factory: start_server(config_dict) -> Server; all are stopped at the end of the session."""
    servers = []

    def start(config: dict) -> Server:
        server = Server(config, lethe_home, tmp_path_factory.mktemp("server"))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
