"""Assemble and run the server: model folder -> engine, guard, shard store, forget queue ->
OpenAI API -> uvicorn; and beside it the forget worker (serving/forget/worker.py), in a process
of its own."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import signal
import subprocess
import sys

import uvicorn
import yaml
from transformers import AutoConfig, AutoTokenizer

from adapters import ShardStore
from guard import Corruption, Guard, SentenceEmbedder, load_corruption

from .api import OpenAIServing, build_app
from .config import Config
from .engines import engine_class
from .forget import ForgetService, open_queue
from .logs import configure_logging
from .metrics import Metrics
from .mixtures import MaterialisedMixtures
from .model import input_embeddings, resolve_model
from .pipeline import Pipeline

log = logging.getLogger("lethe.server")


def load_guard(config: Config, store: ShardStore | None) -> Guard | None:
    """The trained guard if there is one; else, with a shard store to forget from, a guard of
    exemplars alone; else none (a plain server)."""
    trained = (config.guard_dir / "CURRENT").exists()
    if not trained and store is None:
        return None
    embed = SentenceEmbedder()
    if trained:
        return Guard.load(config.guard_dir, embed)
    return Guard.exemplars_only(embed, config.guard.exemplar_threshold)


def create_app(config: Config):
    """The ASGI app for `config`; the engine, the guard's sync with the queue and the worker
    start and stop with the app's lifespan."""
    model_path = resolve_model(config.model.source, config.home_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    max_model_len = config.model.max_model_len or AutoConfig.from_pretrained(
        model_path
    ).max_position_embeddings
    engine = engine_class(config.engine.name)(
        model_path,
        dtype=config.model.dtype,
        max_model_len=max_model_len,
        max_num_seqs=config.engine.max_num_seqs,
        max_loras=config.engine.max_loras,
        max_lora_rank=config.engine.max_lora_rank,
        kv_cache_gib=config.engine.kv_cache_gib,
    )
    metrics = Metrics()
    store = (ShardStore(config.store_dir, mixture_cache=config.route.mixture_cache)
             if (config.store_dir / "store.json").exists() else None)
    guard = load_guard(config, store)
    corruption = load_corruption(config.guard_dir) or Corruption(
        **config.guard.corruption.model_dump())
    resolver = MaterialisedMixtures(store, config.route, metrics) if store else None
    pipeline = Pipeline(tokenizer, input_embeddings(model_path) if guard else None, guard,
                        corruption, resolver, config.forget.on_flag, metrics)
    forget = (ForgetService(open_queue(config.queue_path, config.forget.synchronous),
                            store.lineage, guard,
                            quarantine=config.forget.quarantine, retire=config.forget.retire,
                            metrics=metrics) if store else None)
    serving = OpenAIServing(
        engine,
        tokenizer,
        pipeline,
        model_name=config.model.name,
        max_model_len=max_model_len,
        default_max_tokens=config.server.default_max_tokens,
        metrics=metrics,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        log.info("starting engine %s on %s; shard store: %s; guard: %s", config.engine.name,
                 model_path, store.root if store else "none",
                 "none" if guard is None else "classifier + exemplars" if guard.model
                 else "exemplars only")
        await engine.start()
        async with contextlib.AsyncExitStack() as stack:
            if forget is not None:
                sync = functools.partial(_sync, forget, pipeline)
                await asyncio.to_thread(sync)  # guard pending requests before serving
                stack.push_async_callback(_cancel, asyncio.create_task(
                    _sync_forever(sync, config.forget.poll_seconds)))
                if config.forget.worker:
                    stack.callback(_stop, start_worker(config))
            try:
                yield
            finally:
                await engine.shutdown()

    return build_app(serving, forget, api_keys=config.server.api_keys,
                     admin_keys=config.server.admin_keys, lifespan=lifespan)


def _sync(forget: ForgetService, pipeline: Pipeline) -> None:
    """Guard what is pending, retire what is exact, delete mixtures of superseded versions."""
    forget.sync()
    pipeline.sweep()


async def _sync_forever(sync, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(sync)
        except Exception:  # a failed sync is retried next round; serving goes on
            log.exception("guard sync with the forget queue failed")


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def start_worker(config: Config) -> subprocess.Popen:
    """The forget worker on this config, in a process that dies with the server (Linux)."""
    config_file = config.home_dir / "run" / "worker-config.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.touch(mode=0o600)  # it holds the API keys
    config_file.chmod(0o600)
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    log.info("starting the forget worker")
    return subprocess.Popen([sys.executable, "-m", "serving.forget.worker", "--config",
                             str(config_file)], preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_server(config: Config) -> None:
    configure_logging()
    app = create_app(config)
    uvicorn.run(app, host=config.server.host, port=config.server.port, log_level="info")
