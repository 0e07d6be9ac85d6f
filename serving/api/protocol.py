"""OpenAI wire format: request and response models (the subset Lethe serves)."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _utf8(text: str) -> str:
    """JSON can carry a lone surrogate (\\ud800) that no tokenizer or embedder can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode text (a lone surrogate at position {e.start})") from e
    return text


Text = Annotated[str, AfterValidator(_utf8)]


class OpenAIModel(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers do; fields Lethe cannot honour are
    # declared below and rejected when set.
    model_config = ConfigDict(extra="ignore")


# --- errors ----------------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# --- shared request fields -------------------------------------------------------------------


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class SamplingFields(OpenAIModel):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    # Checked here, before the guard runs: a bad seed gets the same error whatever the prompt.
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Not supported: rejected with a 400 naming the parameter when set.
    logprobs: bool | int | None = None
    tools: list | None = None

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


# --- /v1/completions -------------------------------------------------------------------------


class CompletionRequest(SamplingFields):
    prompt: Text | list[Text] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for this endpoint
    echo: bool = False


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# --- /v1/chat/completions --------------------------------------------------------------------


class TextPart(OpenAIModel):
    """A content part: only text is served (an image or audio part is a 400 naming its type)."""

    type: Literal["text"]
    text: Text


class ChatMessage(OpenAIModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: Text | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(
            part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


# --- /v1/models ------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "lethe"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- forget requests (Lethe's own endpoints) --------------------------------------------------


# Bounds on a forget request, checked before anything is stored: a request past them is refused
# (400 naming the field), never committed and then choked on.
MAX_ID_CHARS = 256  # an owner or sample id
MAX_SAMPLE_IDS = 10_000
MAX_PROMPTS = 100
MAX_PROMPT_CHARS = 8_000  # MiniLM reads 256 word pieces; this is far more than any question


class ForgetBody(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key must not forget the wrong thing

    owner: Annotated[Text, Field(min_length=1, max_length=MAX_ID_CHARS)] | None = None
    sample_ids: list[Annotated[Text, Field(min_length=1, max_length=MAX_ID_CHARS)]] | None = \
        Field(default=None, min_length=1, max_length=MAX_SAMPLE_IDS)
    # Content to guard beyond the samples themselves (e.g. how users ask about them).
    prompts: list[Annotated[Text, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]] = \
        Field(default_factory=list, max_length=MAX_PROMPTS)

    @model_validator(mode="after")
    def _one_target(self):
        if (self.owner is None) == (self.sample_ids is None):
            raise ValueError("give exactly one of owner or sample_ids")
        return self


class ForgetStatus(BaseModel):
    id: str
    object: Literal["forget.request"] = "forget.request"
    state: str
    owner: str | None
    samples: int
    attempts: int
    reason: str | None  # why the last attempt failed
    retry_at: float | None  # failed: unix time of the next attempt
    times: dict[str, float]  # state -> unix time it was entered
