"""Assemble and run the server: model folder -> engine -> OpenAI API -> uvicorn."""

from __future__ import annotations

import contextlib
import logging

import uvicorn
from transformers import AutoConfig, AutoTokenizer

from .api import OpenAIServing, build_app
from .config import Config
from .engines import engine_class
from .metrics import Metrics
from .model import resolve_model

log = logging.getLogger("lethe.server")


def create_app(config: Config):
    """The ASGI app for `config`; the engine starts and stops with the app's lifespan."""
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
    serving = OpenAIServing(
        engine,
        tokenizer,
        model_name=config.model.name,
        max_model_len=max_model_len,
        default_max_tokens=config.server.default_max_tokens,
        metrics=Metrics(),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        log.info("starting engine %s on %s", config.engine.name, model_path)
        await engine.start()
        try:
            yield
        finally:
            await engine.shutdown()

    return build_app(serving, api_keys=config.server.api_keys, lifespan=lifespan)


def run_server(config: Config) -> None:
    app = create_app(config)
    uvicorn.run(app, host=config.server.host, port=config.server.port, log_level="info")
