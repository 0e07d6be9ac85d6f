"""OpenAI completions and chat completions over an Engine. No web framework in here.

Each endpoint turns its request into tokenized prompts and sampling parameters, checks them, runs
one engine request per prompt, and shapes the deltas into OpenAI responses or SSE chunks.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from pydantic import BaseModel
from tokenizers import pre_tokenizers

from ..engines import GREEDY_BELOW, Delta, Engine, EngineRequest, Sampling
from ..metrics import Metrics
from ..pipeline import Pipeline, Prompt
from .errors import EngineFailure, InvalidRequestError, ModelNotFoundError
from .protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatResponseMessage,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    ModelList,
    SamplingFields,
    Usage,
    new_id,
)

DONE = "data: [DONE]\n\n"
log = logging.getLogger("lethe.api")
# Prompts run through the pipeline (guard, corruption, routing) at once: the bound on guard work
# in progress. Each embedder run already uses every core (guard/embed.py), so more checks at
# once only divide them, and take them from everything else: with 4 maximal-length SmolLM2
# chats in flight, a forget submission took 0.16-0.51 s beside one check, 0.40-0.90 s beside
# two (2 vCPUs). A pool of its own: a queue of checks never delays /health, forget submissions
# or tokenizing, which run on other threads.
GUARD_THREADS = 1


@dataclass
class _Choice:
    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None


class OpenAIServing:
    def __init__(
        self,
        engine: Engine,
        tokenizer,
        pipeline: Pipeline,
        *,
        model_name: str,
        max_model_len: int,
        default_max_tokens: int | None,
        metrics: Metrics,
    ):
        self.engine = engine
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.token_chars = max_token_chars(tokenizer)
        self.pipeline = pipeline
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.default_max_tokens = default_max_tokens
        self.metrics = metrics
        self._guard_pool = ThreadPoolExecutor(GUARD_THREADS, thread_name_prefix="lethe-guard")

    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.model_name, max_model_len=self.max_model_len)])

    # --- endpoints ---------------------------------------------------------------------------

    async def completion(self, req: CompletionRequest, tenant: str | None
                         ) -> CompletionResponse | AsyncIterator[str]:
        self._check_common(req)
        if req.echo:
            raise InvalidRequestError("echo is not supported", param="echo")
        prompts = _prompt_list(req.prompt)
        for p in prompts:
            if isinstance(p, str):
                self._check_chars(len(p), req.max_tokens, "prompt")
        tokenized = await asyncio.to_thread(self._completion_ids, prompts)
        max_tokens = self._budget(max(len(ids) for ids in tokenized), req.max_tokens, "prompt")
        texts = [p if isinstance(p, str) else None for p in prompts]
        run = await self._prepare_and_start(
            req, [functools.partial(self.pipeline.completion, ids, text)
                  for ids, text in zip(tokenized, texts)], max_tokens, tenant)
        rid = new_id("cmpl")
        if req.stream:
            return self._stream_completion(rid, req, run)
        choices = await run.collect()
        return CompletionResponse(
            id=rid,
            model=self.model_name,
            choices=[
                CompletionChoice(index=i, text=c.text, finish_reason=c.finish_reason)
                for i, c in enumerate(choices)
            ],
            usage=run.usage(),
        )

    async def chat(self, req: ChatCompletionRequest, tenant: str | None
                   ) -> ChatCompletionResponse | AsyncIterator[str]:
        self._check_common(req)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        requested = req.max_completion_tokens or req.max_tokens
        self._check_chars(sum(len(m["content"]) for m in messages), requested, "messages")
        tokens = await asyncio.to_thread(self.pipeline.chat_tokens, messages)
        max_tokens = self._budget(len(tokens.ids), requested, "messages")
        run = await self._prepare_and_start(
            req, [functools.partial(self.pipeline.chat, messages, tokens)], max_tokens, tenant)
        rid = new_id("chatcmpl")
        if req.stream:
            return self._stream_chat(rid, req, run)
        choices = await run.collect()
        return ChatCompletionResponse(
            id=rid,
            model=self.model_name,
            choices=[
                ChatChoice(
                    index=i,
                    message=ChatResponseMessage(content=c.text),
                    finish_reason=c.finish_reason,
                )
                for i, c in enumerate(choices)
            ],
            usage=run.usage(),
        )

    # --- request checks ----------------------------------------------------------------------

    def _check_common(self, req: SamplingFields) -> None:
        if req.model != self.model_name:
            raise ModelNotFoundError(
                f"The model `{req.model}` does not exist. Available: {self.model_name}",
                param="model",
            )
        for name in ("logprobs", "tools"):
            if getattr(req, name):
                raise InvalidRequestError(f"{name} is not supported", param=name)
        if req.n > 1 and req.temperature < GREEDY_BELOW:
            raise InvalidRequestError(f"n must be 1 when temperature is below {GREEDY_BELOW} "
                                      "(greedy decoding)", param="n")
        if "" in req.stop_list():  # vLLM refuses it mid-generation: refused here, on every engine
            raise InvalidRequestError("a stop string must not be empty", param="stop")
        if req.stream_options is not None and not req.stream:
            raise InvalidRequestError("stream_options is only allowed with stream: true",
                                      param="stream_options")

    def _check_chars(self, chars: int, max_tokens: int | None, param: str) -> None:
        """Refuse, before anything is tokenized, a text too long in characters alone to fit:
        no token spells more than `token_chars` of them."""
        if self.token_chars is None:
            return
        at_least = -(-chars // self.token_chars)  # tokens
        if at_least + (max_tokens or 1) > self.max_model_len:
            raise self._too_long(at_least, max_tokens or 1, param, "at least ")

    def _budget(self, longest: int, max_tokens: int | None, param: str) -> int:
        """The completion's max_tokens (the request's, else what the context leaves, capped by
        `default_max_tokens`), once the longest prompt (tokens) is known to leave room for it."""
        if max_tokens is None:
            max_tokens = self.max_model_len - longest
            if self.default_max_tokens is not None:
                max_tokens = min(max_tokens, self.default_max_tokens)
        if longest + max(max_tokens, 1) > self.max_model_len:
            raise self._too_long(longest, max_tokens, param)
        return max_tokens

    def _too_long(self, prompt: int, completion: int, param: str, bound: str = ""
                  ) -> InvalidRequestError:
        return InvalidRequestError(
            f"This model's maximum context length is {self.max_model_len} tokens. However, "
            f"you requested {bound}{prompt + completion} tokens ({bound}{prompt} in the {param}, "
            f"{completion} in the completion). Please reduce the length of the {param} or "
            "completion.",
            param=param,
            code="context_length_exceeded",
        )

    def _completion_ids(self, prompts: list[str] | list[list[int]]) -> list[list[int]]:
        """Each prompt's token ids, checked (in a worker thread: a long prompt tokenizes for
        as long as a whole batch of short ones)."""
        tokenized = []
        for p in prompts:
            ids = self.tokenizer.encode(p, add_special_tokens=False) if isinstance(p, str) else p
            if not ids:
                raise InvalidRequestError("prompt must not be empty", param="prompt")
            if not 0 <= min(ids) <= max(ids) < self.vocab_size:
                raise InvalidRequestError(
                    f"prompt token ids must be in [0, {self.vocab_size})", param="prompt")
            tokenized.append(ids)
        return tokenized

    async def _prepare_and_start(self, req: SamplingFields, prepare: list[Callable[[], Prompt]],
                                 max_tokens: int, tenant: str | None) -> "_Run":
        """Each prompt through the pipeline (guard, corruption, route, mixture), then the run
        (for `tenant`: the engine shares no state across tenants). The prompts' mixtures stay
        pinned until the run ends (or fails to start)."""
        loop = asyncio.get_running_loop()
        prompts: list[Prompt] = []
        try:
            for step in prepare:
                prompts.append(await loop.run_in_executor(self._guard_pool, step))
        except Exception:
            self.pipeline.release(prompts)
            raise
        sampling = Sampling(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=req.stop_list(),
            seed=req.seed,
            n=req.n,
        )
        return _Run(self.engine, self.metrics, prompts, sampling, self.pipeline.release, tenant)

    # --- streaming ---------------------------------------------------------------------------

    async def _stream_completion(self, rid: str, req: CompletionRequest, run: "_Run"):
        async for index, delta in run.deltas():
            chunk = CompletionResponse(
                id=rid, model=self.model_name,
                choices=[CompletionChoice(index=index, text=delta.text,
                                          finish_reason=delta.finish_reason)],
            )
            yield _sse(chunk)
        if run.error is not None:
            yield _sse(run.error)
        elif req.stream_options and req.stream_options.include_usage:
            yield _sse(CompletionResponse(id=rid, model=self.model_name, choices=[],
                                          usage=run.usage()))
        yield DONE

    async def _stream_chat(self, rid: str, req: ChatCompletionRequest, run: "_Run"):
        def chunk(choices, usage=None):
            return _sse(ChatCompletionChunk(id=rid, model=self.model_name, choices=choices,
                                            usage=usage))

        for i in range(run.n_choices):
            yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
        async for index, delta in run.deltas():
            yield chunk([ChatChunkChoice(index=index, delta=ChatDelta(content=delta.text),
                                         finish_reason=delta.finish_reason)])
        if run.error is not None:
            yield _sse(run.error)
        elif req.stream_options and req.stream_options.include_usage:
            yield chunk([], usage=run.usage())
        yield DONE


class _Run:
    """One API request in flight: an engine request per prompt, merged, with metrics."""

    def __init__(self, engine: Engine, metrics: Metrics, prompts: list[Prompt],
                 sampling: Sampling, release: Callable[[list[Prompt]], None],
                 tenant: str | None):
        self.engine, self.metrics, self.release = engine, metrics, release
        self.prompts, self.sampling, self.tenant = prompts, sampling, tenant
        self.n_choices = len(prompts) * sampling.n
        self.choices = [_Choice() for _ in range(self.n_choices)]
        self.error: ErrorResponse | None = None
        self._started = time.monotonic()
        self._first_token_at: float | None = None

    def usage(self) -> Usage:
        prompt = sum(len(p.token_ids) for p in self.prompts)
        completion = sum(c.tokens for c in self.choices)
        return Usage(prompt_tokens=prompt, completion_tokens=completion,
                     total_tokens=prompt + completion)

    async def collect(self) -> list[_Choice]:
        async for _ in self.deltas():
            pass
        if self.error is not None:
            raise EngineFailure(self.error.error.message)
        return self.choices

    async def deltas(self) -> AsyncIterator[tuple[int, Delta]]:
        """(choice index, delta) from all prompts as they come; sets self.error on failure."""
        merged: asyncio.Queue = asyncio.Queue()
        request_id = new_id("req")

        async def pump(p: int, prompt: Prompt) -> None:
            request = EngineRequest(f"{request_id}-{p}", prompt.token_ids, self.sampling,
                                    prompt.embeds, prompt.lora, self.tenant)
            try:
                async for deltas in self.engine.generate(request):
                    await merged.put((p, deltas))
            except Exception as e:  # any engine failure ends this request, never the server
                log.exception("engine failed on %s", request.request_id)
                await merged.put((p, e))
            finally:
                await merged.put((p, None))

        tasks = [asyncio.create_task(pump(p, prompt)) for p, prompt in enumerate(self.prompts)]
        try:
            running = len(tasks)
            while running:
                p, item = await merged.get()
                if item is None:
                    running -= 1
                elif isinstance(item, Exception):
                    self.error = ErrorResponse(error=ErrorInfo(
                        message=f"generation failed ({type(item).__name__}); see the server log",
                        type="internal_server_error"))
                else:
                    for delta in item:
                        yield p * self.sampling.n + delta.index, self._record(p, delta)
        finally:
            for t in tasks:
                t.cancel()
            self._finish()

    def _record(self, p: int, delta: Delta) -> Delta:
        if self._first_token_at is None and delta.token_ids:
            self._first_token_at = time.monotonic()
        choice = self.choices[p * self.sampling.n + delta.index]
        choice.text += delta.text
        choice.tokens += len(delta.token_ids)
        choice.finish_reason = delta.finish_reason or choice.finish_reason
        return delta

    def _finish(self) -> None:
        self.release(self.prompts)
        now = time.monotonic()
        if self._first_token_at is not None:
            self.metrics.time_to_first_token.observe(self._first_token_at - self._started)
        self.metrics.e2e_latency.observe(now - self._started)
        self.metrics.prompt_tokens.inc(sum(len(p.token_ids) for p in self.prompts))
        self.metrics.generation_tokens.inc(sum(c.tokens for c in self.choices))


def _prompt_list(prompt: str | list[str] | list[int] | list[list[int]]
                 ) -> list[str] | list[list[int]]:
    """A completion request's prompts: strings or token id lists."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidRequestError("prompt must not be empty", param="prompt")
    return [prompt] if isinstance(prompt[0], int) else prompt


def max_token_chars(tokenizer) -> int | None:
    """The most characters of text one token can stand for, where that is known: a byte-level
    tokenizer with no normalizer spells every byte of its input with tokens no longer (in
    characters) than its vocabulary's longest entry. None for other tokenizers (a normalizer
    or pre-tokenizer may drop characters, so no count of them bounds the tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.normalizer is not None or not isinstance(
            backend.pre_tokenizer, pre_tokenizers.ByteLevel):
        return None
    return max(map(len, tokenizer.get_vocab()))


def _sse(payload: BaseModel) -> str:
    return f"data: {json.dumps(payload.model_dump(exclude_none=False))}\n\n"
