"""Assemble and run the server: model folder -> engine, guard, shard store, forget queue ->
OpenAI API -> uvicorn; and beside it the forget worker, in a process of its own that is started
again whenever it dies (serving/forget/supervisor.py)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import socket

import uvicorn
from transformers import AutoConfig, AutoTokenizer

from adapters import ShardStore
from base import Signer, load_secret
from guard import Guard, SentenceEmbedder, general_vectors, trained_version

from .api import OpenAIServing, build_app
from .config import Config
from .embedder import SharedEmbedder
from .errors import UsageError
from .engines import Engine, engine_class
from .forget import ForgetService, WorkerSupervisor, open_queue
from .logs import configure_logging
from .metrics import Metrics
from .model import embedder_name, input_embeddings, resolve_model, sentence_embedder
from .pipeline import Pipeline, build_pipeline, guard_options
from .shards import open_store

log = logging.getLogger("lethe.server")


def load_guard(config: Config, embedder: SentenceEmbedder, trained: bool) -> Guard:
    """The trained guard if there is one (`trained`), else a guard of exemplars alone."""
    # Shared by chats' guard checks and forget submissions, which go first (serving/embedder.py).
    embed = SharedEmbedder(embedder)
    options = guard_options(config, embedder)
    if trained:
        guard = Guard.load(config.guard_dir, embed, **options)
        fitted_on, served_with = (guard.model.manifest.get("embedder"),
                                  embedder_name(config.guard.embedder))
        if fitted_on != served_with:
            log.warning("the guard was trained on %s vectors and is served with %s: its threshold "
                        "is calibrated for the former (train it again with `lethe guard train`)",
                        fitted_on, served_with)
        return guard
    return Guard.exemplars_only(embed, config.guard.exemplar_threshold, **options)


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
        prefix_caching=config.engine.prefix_caching,
        rank_scales=config.route.mixing == "in-engine",
        device=config.model.device,
    )
    metrics = Metrics()
    # This replica's name among those that share home: its own mixture folder
    # (adapters/mixture.py).
    replica = f"{socket.gethostname()}-{config.server.port}"
    store = (open_store(config, mixtures=replica)
             if (config.store_dir / "store.json").exists() else None)
    if store is not None and store.stack_rank() > config.engine.max_lora_rank:
        raise UsageError(
            f"engine.max_lora_rank is {config.engine.max_lora_rank}, below the rank of the shard "
            f"adapters stacked ({store.stack_rank()}: K shards x r); set it to at least that")
    # A guard when there is a trained one or a shard store to forget from; else a plain server.
    trained = trained_version(config.guard_dir) is not None
    embedder = (sentence_embedder(config.guard.embedder, config.cache_dir)
                if trained or store is not None else None)
    guard = load_guard(config, embedder, trained) if embedder is not None else None
    config.home_dir.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(config, tokenizer, input_embeddings(model_path) if guard else None,
                              guard, store, metrics, load_secret(config.secret_file))
    forget = (ForgetService(open_queue(config.queue_target, config.forget.synchronous,
                                       config.secret_file),
                            store.lineage, guard, general=general_vectors(embedder),
                            quarantine=config.forget.quarantine != "none",
                            metrics=metrics,
                            receipt_key=Signer.of_store(store.root).record())
              if store else None)
    serving = OpenAIServing(
        engine,
        tokenizer,
        pipeline,
        model_name=config.model.name,
        max_model_len=max_model_len,
        default_max_tokens=config.server.default_max_tokens,
        metrics=metrics,
    )

    supervisor = (WorkerSupervisor(config.model_dump(mode="json"),
                                   config.forget.worker_restart_max_seconds)
                  if forget is not None and config.forget.worker else None)
    # Before 2026-12 the worker's config, keys and store password included, was written here;
    # it now goes through a pipe. An upgraded install's old file must not outlive the upgrade.
    (config.home_dir / "run" / f"worker-{replica}.yaml").unlink(missing_ok=True)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        log.info("starting engine %s on %s; shard store: %s; guard: %s", config.engine.name,
                 model_path, store.root if store else "none",
                 "none" if guard is None else "classifier + exemplars" if guard.model
                 else "exemplars only")
        await engine.start()
        async with contextlib.AsyncExitStack() as stack:
            if forget is not None:
                sync = functools.partial(_sync, forget, pipeline, engine)
                await sync()  # guard pending requests before serving
                stack.push_async_callback(_cancel, asyncio.create_task(
                    _sync_forever(sync, forget.queue, config.forget.poll_seconds)))
                if supervisor is not None:
                    supervisor.start()
                    stack.callback(supervisor.stop)
                    stack.push_async_callback(_cancel, asyncio.create_task(supervisor.watch()))
            # What is loaded by now (model, tokenizers, embedder, guard) lives as long as the
            # server: out of the collector's sight, a full collection no longer walks it (under
            # load it paused every thread for 0.1-0.7 s every few seconds; /health waited).
            gc.freeze()
            try:
                yield
            finally:
                await engine.shutdown()

    return build_app(serving, forget, supervisor, api_keys=config.server.api_keys,
                     admin_keys=config.server.admin_keys,
                     max_body_bytes=config.server.max_body_bytes, lifespan=lifespan)


async def _sync(forget: ForgetService, pipeline: Pipeline, engine: Engine) -> None:
    """Guard what is pending, retire what is exact, delete mixtures of superseded versions from
    disk and from the engine (their weights may hold forgotten data)."""
    await asyncio.to_thread(forget.sync)
    for name in await asyncio.to_thread(pipeline.sweep):
        await engine.evict(name)


async def _sync_forever(sync, queue, seconds: float) -> None:
    """`sync` every `seconds`, and at once when the queue hears of a request submitted or
    completed elsewhere (another replica, the worker)."""
    while True:
        try:
            await asyncio.to_thread(queue.wait, seconds)
            await sync()
        except Exception:  # a failed sync is retried next round; serving goes on
            log.exception("guard sync with the forget queue failed")


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def run_server(config: Config) -> None:
    configure_logging()
    app = create_app(config)
    uvicorn.run(app, host=config.server.host, port=config.server.port, log_level="info")
