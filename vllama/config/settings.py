"""Configuration: server settings, per-model specs and peers, validated once at load.

Precedence for server settings: command-line flags > `VLLAMA_*` environment > the file's `[server]`
table. Models come only from the file's `[models.<name>]` tables (or the built-in demo
configuration when no file is given), peers only from its `[peers.<name>]` tables. Anything wrong
raises `ConfigError` naming the dotted key. One module, because the tables are checked against
each other (a name is used once across models, aliases, adapters and peers).
"""

from __future__ import annotations

import re
import sys
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from vllama.config import vllm_args
from vllama.config.access import ApiKey
from vllama.config.units import parse_duration, parse_size

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434
DEFAULT_MODELS_DIR = Path("~/.vllama/models")
MAX_REPLICAS = 8  # workers of one model (`replicas`, `max_replicas`; config/replicas.py)

# A model name is what clients send in `model`; Ollama's `name:tag` and Hugging Face's `org/name`
# shapes both fit. It is only ever used as a dictionary key and an argv item, never as a path.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}\Z")

Seconds = Annotated[float, BeforeValidator(parse_duration)]
Bytes = Annotated[int, BeforeValidator(parse_size)]


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending key."""


class ModelSpec(BaseModel):
    """One `[models.<name>]` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, description="Hugging Face repo id or local folder")
    args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    keep_alive: Seconds | None = None
    max_parallel: int | None = Field(default=None, ge=1)
    # Output tokens for a request that sets no budget (unset: [server] max_output_tokens). Read
    # per request: changing it restarts nothing.
    max_output_tokens: int | None = Field(default=None, ge=1)
    # Workers kept while it is in use, and the most while busy (docs/SCALE-OUT.md).
    replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)
    max_replicas: int | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    ray_address: str | None = Field(default=None, min_length=1)  # docs/SCALE-OUT.md
    pinned: bool = False  # never evicted to make room for another model
    preload: bool = False  # loaded at start-up
    sleep_when_idle: bool = False  # GPU only: vLLM sleep mode (level 1) instead of stopping
    # vLLM's parsers, chosen from the model's files unless set here ("none" turns one off);
    # explicit `args` win over both (docs/MODELS.md).
    tool_parser: str | None = None
    reasoning_parser: str | None = None
    # LoRA adapters served by this model's worker: name -> a local PEFT folder. Each name is a
    # model clients can ask for; all of them share the one base worker.
    adapters: dict[str, str] = Field(default_factory=dict)

    @field_validator("args")
    @classmethod
    def _no_reserved_args(cls, args: tuple[str, ...]) -> tuple[str, ...]:
        vllm_args.check_user_args(args)
        return args

    @field_validator("tool_parser")
    @classmethod
    def _known_tool_parser(cls, name: str | None) -> str | None:
        return _known(name, vllm_args.TOOL_PARSERS, "tool parser")

    @field_validator("reasoning_parser")
    @classmethod
    def _known_reasoning_parser(cls, name: str | None) -> str | None:
        return _known(name, vllm_args.REASONING_PARSERS, "reasoning parser")

    @field_validator("aliases")
    @classmethod
    def _alias_names(cls, aliases: tuple[str, ...]) -> tuple[str, ...]:
        for alias in aliases:
            if not MODEL_NAME.match(alias):
                raise ValueError(f"invalid alias {alias!r}")
        return aliases

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, adapters: dict[str, str]) -> dict[str, str]:
        for name in adapters:
            if not MODEL_NAME.match(name):
                raise ValueError(f"invalid adapter name {name!r}")
        return adapters

    @model_validator(mode="after")
    def _replica_range(self) -> ModelSpec:
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below replicas ({self.replicas})"
            )
        if (self.replicas > 1 or self.max_replicas) and self.sleep_when_idle:
            raise ValueError("replicas and sleep_when_idle do not go together")
        return self

    @property
    def ray(self) -> str | None:
        """The Ray cluster the model runs on: `ray_address`, else `RAY_ADDRESS` in its env."""
        return self.ray_address or self.env.get("RAY_ADDRESS")

    @property
    def is_local(self) -> bool:
        return self.model.startswith(("/", "./", "../", "~"))


def _known(name: str | None, known: frozenset[str], role: str) -> str | None:
    if name is None or name == "none" or name in known:
        return name
    raise ValueError(f"unknown {role} {name!r} (vLLM 0.32 has: none, {', '.join(sorted(known))})")


class PeerSpec(BaseModel):
    """One `[peers.<name>]` table: another vllama, an Ollama, a vLLM server or any
    OpenAI-compatible server, whose models this daemon serves by relaying to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    api_key: str | None = Field(default=None, min_length=1, repr=False)  # sent as a Bearer token
    # The peer's models, as clients name them here. Empty: read from the peer (its /api/tags, or
    # its /v1/models), and kept up to date by the health check.
    models: tuple[str, ...] = ()

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or a fragment")
        return value.rstrip("/")

    @field_validator("models")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("lists a model twice")
        return value


class ServerSettings(BaseSettings):
    """Server-wide settings (`[server]`, `VLLAMA_*`, flags)."""

    model_config = SettingsConfigDict(env_prefix="VLLAMA_", extra="forbid")

    host: str = DEFAULT_HOST
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    config: Path | None = None
    models_dir: Path = DEFAULT_MODELS_DIR
    runtime_dir: Path | None = None  # default: systemd's RuntimeDirectory, else ~/.vllama/run
    keep_alive: Seconds = 300.0
    load_stall_timeout: Seconds = Field(default=300.0, gt=0)
    stop_timeout: Seconds = Field(default=20.0, gt=0)
    drain_timeout: Seconds = Field(default=30.0, ge=0)
    health_interval: Seconds = Field(default=5.0, gt=0)
    # The longest a worker may send nothing on a streamed answer (headers, between chunks): a hung
    # engine whose /health still answers (ai/DECISIONS.md). Non-streamed /v1 has no deadline.
    stream_idle_timeout: Seconds = Field(default=300.0, gt=0)
    # Slow clients: a connection with no complete request headers this long is closed (a
    # keep-alive connection left idle too; nginx's keepalive_timeout is 75 s), and a request
    # body not received within body_timeout is a 408.
    idle_timeout: Seconds = Field(default=60.0, gt=0)
    body_timeout: Seconds = Field(default=120.0, gt=0)
    # Engine processes kept started ahead of need, vLLM already imported (~10 s of a cold start):
    # a load takes one over. Each holds ~0.5-1 GB of host RAM (counted in memory_limit_cpu).
    warm_spares: int = Field(default=1, ge=0, le=8)
    # A load reads its model's weight files into the page cache while it waits for room and its
    # engine imports, so vLLM finds them in memory (engine/page_cache.py).
    read_ahead_weights: bool = True
    # Scheduling: memory budgets per device, caps, the wait queue, crash-loop handling.
    memory_limit_cpu: Bytes | None = None  # host RAM vllama's CPU workers may use (default: all)
    # Host RAM set aside for vllama's CPU workers (a dedicated host, a test run's fake engine):
    # the CPU budget, counted on whatever is measured free at the moment. Unset, memory measured
    # free also bounds every CPU load, so another program's use can refuse one.
    memory_reserved_cpu: Bytes | None = None
    memory_limit_gpu: Bytes | None = None  # per GPU (default: the GPU's total)
    # KV cache for workers that set none. On CPU it becomes VLLM_CPU_KVCACHE_SPACE (unset, vLLM
    # takes ~90% of host RAM, so no second model would fit); on GPUs it is part of the share
    # given with --gpu-memory-utilization.
    kv_cache: Bytes = Field(default=4 << 30, ge=1 << 30)
    max_loaded_models: int | None = Field(default=None, ge=1)
    max_queue: int = Field(default=512, ge=1)  # requests waiting for a model, as Ollama's
    # Output tokens for a request that sets no budget (`max_tokens`, `num_predict`...), unless
    # its model sets its own; unset: up to the model's context. A budget never passes the
    # context either way (docs/API.md, Context and output limits).
    max_output_tokens: int | None = Field(default=None, ge=1)
    load_timeout: Seconds = Field(default=600.0, gt=0)  # how long a request waits for a load
    drain_wait: Seconds = Field(default=60.0, ge=0)  # how long a load waits for busy workers
    memory_recovery_timeout: Seconds = Field(default=15.0, ge=0)
    restart_backoff: Seconds = Field(default=1.0, ge=0)  # doubled per consecutive fast failure
    restart_backoff_max: Seconds = Field(default=60.0, ge=0)
    crash_loop_failures: int = Field(default=3, ge=1)  # fast failures in a row -> FATAL
    # "Fast": failed before READY or within this long after (supervisord's startsecs is 1 s).
    crash_loop_window: Seconds = Field(default=5.0, gt=0)
    fatal_retry_backoff: Seconds = Field(default=10.0, gt=0)  # a FATAL model retried after this,
    fatal_retry_backoff_max: Seconds = Field(default=300.0, gt=0)  # doubling up to this
    max_request_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # The most of an upstream's answer (a worker's, a peer's) vllama holds whole, to relay,
    # translate or parse it; a larger one is a 502. Streams pass through, not held.
    max_answer_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    # Below Linux's ephemeral range (32768-60999), so no outgoing connection takes a worker's
    # port between its check and vLLM's bind.
    worker_port_min: int = Field(default=24000, ge=1024, le=65535)
    worker_port_max: int = Field(default=24999, ge=1024, le=65535)
    # vLLM's OpenAI server as a module: works for `vllm` and `vllm-cpu` (the `vllm` script fails
    # under vllm-cpu). Tests point it at a fake server.
    engine_command: list[str] = Field(
        default_factory=lambda: [sys.executable, "-m", vllm_args.SERVER_MODULE], min_length=1
    )
    # vLLM arguments and environment for models found on disk (models folder, Hugging Face
    # cache) rather than configured: e.g. ["--enforce-eager"] on a CPU host.
    default_args: list[str] = Field(default_factory=list)
    default_env: dict[str, str] = Field(default_factory=dict)
    log_tail_lines: int = Field(default=200, ge=10)
    # Access (docs/OPERATIONS.md, Security): keys, and what browsers may reach.
    api_keys: list[ApiKey] = Field(default_factory=list)
    api_key: str | None = Field(default=None, min_length=16, repr=False)  # VLLAMA_API_KEY: admin
    metrics_public: bool = False  # /metrics without a key (when keys are set)
    tls_cert: Path | None = None  # with tls_key: HTTPS on the same port (a PEM chain)
    tls_key: Path | None = None
    allowed_origins: list[str] = Field(default_factory=list)  # added to the loopback ones; "*"
    allowed_hosts: list[str] = Field(default_factory=list)  # Host names a loopback bind accepts
    log_level: str = "info"
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")

    @model_validator(mode="before")
    @classmethod
    def _port_in_host(cls, data: Any) -> Any:
        """`host` may name a port, in the forms the CLI reads `VLLAMA_HOST` in (Ollama's
        OLLAMA_HOST: `host:port`, `[v6]:port`, `http://host:port`), so one VLLAMA_HOST serves
        both: that port is the port unless `port` is set (flag, VLLAMA_PORT or the file)."""
        if isinstance(data, dict) and isinstance(data.get("host"), str):
            host, port = _split_host(data["host"])
            data = {**data, "host": host}
            if port is not None and data.get("port") is None:
                data["port"] = port
        return data

    @field_validator("default_args")
    @classmethod
    def _no_reserved_default_args(cls, args: list[str]) -> list[str]:
        vllm_args.check_user_args(args)
        return args

    @model_validator(mode="after")
    def _port_range(self) -> ServerSettings:
        if self.worker_port_min > self.worker_port_max:
            raise ValueError("worker_port_min must not exceed worker_port_max")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.memory_limit_cpu is not None and self.memory_reserved_cpu is not None:
            raise ValueError("memory_limit_cpu and memory_reserved_cpu: set one (the budget)")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.expanduser().is_file():
                raise ValueError(f"{path} does not exist")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags arrive as init kwargs and win over the environment; the file's [server] table
        # (set by `load_config` for the duration of one construction) comes below both.
        return (init_settings, env_settings, _FileSource(settings_cls, _SERVER_TABLE.get()))


class Config(BaseModel):
    """Everything the daemon runs with."""

    model_config = ConfigDict(frozen=True)

    server: ServerSettings
    models: dict[str, ModelSpec]
    peers: dict[str, PeerSpec] = {}

    def names(self) -> dict[str, str]:
        """Every name a client may send (model names and aliases) -> the model's name."""
        table = {name: name for name in self.models}
        for name, spec in self.models.items():
            for alias in spec.aliases:
                table[alias] = name
        return table

    def adapters(self) -> dict[str, tuple[str, str]]:
        """Every configured LoRA adapter's name -> (its base model's name, its folder)."""
        return {
            adapter: (name, path)
            for name, spec in self.models.items()
            for adapter, path in spec.adapters.items()
        }


# The config file's [server] table while `load_config` builds the settings from it.
_SERVER_TABLE: ContextVar[dict[str, Any]] = ContextVar("server_table", default={})  # noqa: B039


class _FileSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:  # a directory, no permission, an I/O error
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None


def _split_host(text: str) -> tuple[str, int | str | None]:
    """A listen address and the port it names, if any (a port that is no number is passed on
    for `port`'s own check to refuse)."""
    rest = text.strip()
    scheme, sep, after = rest.partition("://")
    if sep and scheme in ("http", "https"):
        rest = after
    rest = rest.rstrip("/")
    port: str | None = None
    if rest.startswith("["):  # [v6] or [v6]:port
        rest, _, tail = rest[1:].partition("]")
        port = tail.removeprefix(":") or None
    elif rest.count(":") == 1:  # not a bare IPv6 address
        rest, _, port = rest.partition(":")
    if port is None:
        return rest, None
    return rest, int(port) if port.isdigit() else port


def load_config(
    flags: dict[str, Any] | None = None,
    file_data: dict[str, Any] | None = None,
    base_dir: Path | None = None,
) -> Config:
    """Validate flags + environment + file data into a `Config`.

    `file_data` is the parsed TOML document (or the built-in default); `base_dir` resolves relative
    local model folders (the config file's folder).
    """
    flags = {key: value for key, value in (flags or {}).items() if value is not None}
    data = dict(file_data or {})
    unknown = set(data) - {"server", "models", "peers"}
    if unknown:
        raise ConfigError(f"unknown top-level key(s): {', '.join(sorted(unknown))}")
    server_data = data.get("server", {})
    models_data = data.get("models", {})
    peers_data = data.get("peers", {})
    if not isinstance(peers_data, dict) or not all(
        isinstance(t, dict) for t in peers_data.values()
    ):
        raise ConfigError("peers: must be a table of [peers.<name>] tables")
    if not isinstance(server_data, dict):
        raise ConfigError("server: must be a table")
    if not isinstance(models_data, dict):
        raise ConfigError("models: must be a table of [models.<name>] tables")

    token = _SERVER_TABLE.set(server_data)
    try:
        server = ServerSettings(**flags)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, prefix="server")) from None
    finally:
        _SERVER_TABLE.reset(token)

    models: dict[str, ModelSpec] = {}
    for name, table in models_data.items():
        if not MODEL_NAME.match(name):
            raise ConfigError(f"models.{name}: invalid model name (letters, digits, ._:/- only)")
        if not isinstance(table, dict):
            raise ConfigError(f"models.{name}: must be a table")
        try:
            spec = ModelSpec.model_validate(table)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, prefix=f"models.{name}")) from None
        models[name] = _resolve_local(name, spec, base_dir)

    peers: dict[str, PeerSpec] = {}
    for name, table in peers_data.items():
        try:
            peers[name] = PeerSpec.model_validate(table)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, prefix=f"peers.{name}")) from None

    config = Config(server=server, models=models, peers=peers)
    _check_unique_names(config)
    return config


def _resolve_local(name: str, spec: ModelSpec, base_dir: Path | None) -> ModelSpec:
    def folder(text: str, key: str) -> str:
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        path = path.resolve()
        if not path.is_dir():
            raise ConfigError(f"models.{name}.{key}: local folder {path} does not exist")
        return str(path)

    adapters = {
        adapter: folder(path, f"adapters.{adapter}") for adapter, path in spec.adapters.items()
    }
    model = folder(spec.model, "model") if spec.is_local else spec.model
    return spec.model_copy(update={"model": model, "adapters": adapters})


def _check_unique_names(config: Config) -> None:
    seen: dict[str, str] = {name: f"models.{name}" for name in config.models}
    for name, spec in config.models.items():
        for key, names in (("aliases", spec.aliases), ("adapters", tuple(spec.adapters))):
            for other in names:
                if other in seen:
                    raise ConfigError(
                        f"models.{name}.{key}: {other!r} is already used by {seen[other]}"
                    )
                seen[other] = f"models.{name}.{key}"
    # A peer's listed model may not take a local name (or another peer's): a request for it
    # would be ambiguous. Names the peers report themselves are checked as they arrive.
    for peer, peer_spec in config.peers.items():
        for model in peer_spec.models:
            bare = model.removesuffix(":latest")
            user = seen.get(bare) or seen.get(f"{bare}:latest")
            if user is not None:
                raise ConfigError(f"peers.{peer}.models: {model!r} is already used by {user}")
            seen[bare] = f"peers.{peer}.models"


def _describe(exc: ValidationError, prefix: str) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join([prefix, *(str(part) for part in error["loc"])])
        lines.append(f"{key}: {error['msg']}")
    return "; ".join(lines)
