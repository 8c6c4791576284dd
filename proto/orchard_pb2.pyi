from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Endpoint(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENDPOINT_UNSPECIFIED: _ClassVar[Endpoint]
    ENDPOINT_CHAT_COMPLETIONS: _ClassVar[Endpoint]
    ENDPOINT_COMPLETIONS: _ClassVar[Endpoint]
    ENDPOINT_EMBEDDINGS: _ClassVar[Endpoint]
    ENDPOINT_TOKENIZE: _ClassVar[Endpoint]
    ENDPOINT_DETOKENIZE: _ClassVar[Endpoint]
    ENDPOINT_MESSAGES: _ClassVar[Endpoint]
    ENDPOINT_COUNT_TOKENS: _ClassVar[Endpoint]
    ENDPOINT_RESPONSES: _ClassVar[Endpoint]
    ENDPOINT_GET_RESPONSE: _ClassVar[Endpoint]

class EngineState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENGINE_STATE_UNSPECIFIED: _ClassVar[EngineState]
    ENGINE_STATE_STARTING: _ClassVar[EngineState]
    ENGINE_STATE_READY: _ClassVar[EngineState]
    ENGINE_STATE_RESTARTING: _ClassVar[EngineState]
    ENGINE_STATE_STOPPING: _ClassVar[EngineState]
    ENGINE_STATE_FAILED: _ClassVar[EngineState]
    ENGINE_STATE_STOPPED: _ClassVar[EngineState]
ENDPOINT_UNSPECIFIED: Endpoint
ENDPOINT_CHAT_COMPLETIONS: Endpoint
ENDPOINT_COMPLETIONS: Endpoint
ENDPOINT_EMBEDDINGS: Endpoint
ENDPOINT_TOKENIZE: Endpoint
ENDPOINT_DETOKENIZE: Endpoint
ENDPOINT_MESSAGES: Endpoint
ENDPOINT_COUNT_TOKENS: Endpoint
ENDPOINT_RESPONSES: Endpoint
ENDPOINT_GET_RESPONSE: Endpoint
ENGINE_STATE_UNSPECIFIED: EngineState
ENGINE_STATE_STARTING: EngineState
ENGINE_STATE_READY: EngineState
ENGINE_STATE_RESTARTING: EngineState
ENGINE_STATE_STOPPING: EngineState
ENGINE_STATE_FAILED: EngineState
ENGINE_STATE_STOPPED: EngineState

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "endpoint", "body", "heartbeat_seconds", "stream", "tap_id", "tap_key")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TAP_ID_FIELD_NUMBER: _ClassVar[int]
    TAP_KEY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    endpoint: Endpoint
    body: bytes
    heartbeat_seconds: float
    stream: bool
    tap_id: str
    tap_key: str
    def __init__(self, request_id: _Optional[str] = ..., endpoint: _Optional[_Union[Endpoint, str]] = ..., body: _Optional[bytes] = ..., heartbeat_seconds: _Optional[float] = ..., stream: _Optional[bool] = ..., tap_id: _Optional[str] = ..., tap_key: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_prompt_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_prompt_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., cached_prompt_tokens: _Optional[int] = ...) -> None: ...

class Final(_message.Message):
    __slots__ = ("usage", "finish_reason", "engine_seconds")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    ENGINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    usage: Usage
    finish_reason: str
    engine_seconds: float
    def __init__(self, usage: _Optional[_Union[Usage, _Mapping]] = ..., finish_reason: _Optional[str] = ..., engine_seconds: _Optional[float] = ...) -> None: ...

class Chunks(_message.Message):
    __slots__ = ("items", "usage", "events")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedScalarFieldContainer[bytes]
    usage: Usage
    events: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[bytes]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., events: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerateReply(_message.Message):
    __slots__ = ("chunks", "response", "final", "heartbeat", "rest_on_tap")
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REST_ON_TAP_FIELD_NUMBER: _ClassVar[int]
    chunks: Chunks
    response: bytes
    final: Final
    heartbeat: Heartbeat
    rest_on_tap: bool
    def __init__(self, chunks: _Optional[_Union[Chunks, _Mapping]] = ..., response: _Optional[bytes] = ..., final: _Optional[_Union[Final, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., rest_on_tap: _Optional[bool] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TapRequest(_message.Message):
    __slots__ = ("tap_id", "window_bytes")
    TAP_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_BYTES_FIELD_NUMBER: _ClassVar[int]
    tap_id: str
    window_bytes: int
    def __init__(self, tap_id: _Optional[str] = ..., window_bytes: _Optional[int] = ...) -> None: ...

class TapPart(_message.Message):
    __slots__ = ("key", "reply", "end", "size")
    KEY_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    key: str
    reply: GenerateReply
    end: bool
    size: int
    def __init__(self, key: _Optional[str] = ..., reply: _Optional[_Union[GenerateReply, _Mapping]] = ..., end: _Optional[bool] = ..., size: _Optional[int] = ...) -> None: ...

class TapBatch(_message.Message):
    __slots__ = ("parts",)
    PARTS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[TapPart]
    def __init__(self, parts: _Optional[_Iterable[_Union[TapPart, _Mapping]]] = ...) -> None: ...

class CreditRequest(_message.Message):
    __slots__ = ("tap_id", "key", "bytes")
    TAP_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    tap_id: str
    key: str
    bytes: int
    def __init__(self, tap_id: _Optional[str] = ..., key: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class CreditReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("draining",)
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    draining: bool
    def __init__(self, draining: _Optional[bool] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("identity",)
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    identity: bytes
    def __init__(self, identity: _Optional[bytes] = ...) -> None: ...

class RenewReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ("model", "argv", "need_bytes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    NEED_BYTES_FIELD_NUMBER: _ClassVar[int]
    model: str
    argv: _containers.RepeatedScalarFieldContainer[str]
    need_bytes: int
    def __init__(self, model: _Optional[str] = ..., argv: _Optional[_Iterable[str]] = ..., need_bytes: _Optional[int] = ...) -> None: ...

class LoadReply(_message.Message):
    __slots__ = ("port",)
    PORT_FIELD_NUMBER: _ClassVar[int]
    port: int
    def __init__(self, port: _Optional[int] = ...) -> None: ...

class UnloadRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class UnloadReply(_message.Message):
    __slots__ = ("was_loaded",)
    WAS_LOADED_FIELD_NUMBER: _ClassVar[int]
    was_loaded: bool
    def __init__(self, was_loaded: _Optional[bool] = ...) -> None: ...

class DrainReply(_message.Message):
    __slots__ = ("draining", "inflight")
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    draining: bool
    inflight: int
    def __init__(self, draining: _Optional[bool] = ..., inflight: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "source", "max_model_len", "unsupported", "engine", "routes", "capabilities", "capabilities_known")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    UNSUPPORTED_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_KNOWN_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    max_model_len: int
    unsupported: _containers.RepeatedScalarFieldContainer[str]
    engine: str
    routes: _containers.RepeatedScalarFieldContainer[str]
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    capabilities_known: bool
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., max_model_len: _Optional[int] = ..., unsupported: _Optional[_Iterable[str]] = ..., engine: _Optional[str] = ..., routes: _Optional[_Iterable[str]] = ..., capabilities: _Optional[_Iterable[str]] = ..., capabilities_known: _Optional[bool] = ...) -> None: ...

class InfoReply(_message.Message):
    __slots__ = ("worker_id", "hostname", "os", "chip", "memory_bytes", "engine", "engine_version", "models", "max_concurrency", "engine_url", "agent_version", "group", "settles_stream_options", "usable_memory_bytes", "children")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    CHIP_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    ENGINE_URL_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    SETTLES_STREAM_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    USABLE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    hostname: str
    os: str
    chip: str
    memory_bytes: int
    engine: str
    engine_version: str
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    max_concurrency: int
    engine_url: str
    agent_version: str
    group: GroupInfo
    settles_stream_options: bool
    usable_memory_bytes: int
    children: _containers.RepeatedCompositeFieldContainer[Child]
    def __init__(self, worker_id: _Optional[str] = ..., hostname: _Optional[str] = ..., os: _Optional[str] = ..., chip: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., engine: _Optional[str] = ..., engine_version: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., max_concurrency: _Optional[int] = ..., engine_url: _Optional[str] = ..., agent_version: _Optional[str] = ..., group: _Optional[_Union[GroupInfo, _Mapping]] = ..., settles_stream_options: _Optional[bool] = ..., usable_memory_bytes: _Optional[int] = ..., children: _Optional[_Iterable[_Union[Child, _Mapping]]] = ...) -> None: ...

class Child(_message.Message):
    __slots__ = ("model", "port")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    model: str
    port: int
    def __init__(self, model: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class GroupInfo(_message.Message):
    __slots__ = ("name", "rank", "size", "mode", "backend", "peers")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    rank: int
    size: int
    mode: str
    backend: str
    peers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., rank: _Optional[int] = ..., size: _Optional[int] = ..., mode: _Optional[str] = ..., backend: _Optional[str] = ..., peers: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("interval_seconds",)
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    interval_seconds: float
    def __init__(self, interval_seconds: _Optional[float] = ...) -> None: ...

class Load(_message.Message):
    __slots__ = ("running", "waiting", "kv_cache_usage", "prefix_cache_queries", "prefix_cache_hits", "generation_tokens", "prompt_tokens", "prefill_tokens_per_s", "decode_tokens_per_s")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_QUERIES_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    running: int
    waiting: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    generation_tokens: int
    prompt_tokens: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    def __init__(self, running: _Optional[int] = ..., waiting: _Optional[int] = ..., kv_cache_usage: _Optional[float] = ..., prefix_cache_queries: _Optional[int] = ..., prefix_cache_hits: _Optional[int] = ..., generation_tokens: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., prefill_tokens_per_s: _Optional[float] = ..., decode_tokens_per_s: _Optional[float] = ...) -> None: ...

class LoadSample(_message.Message):
    __slots__ = ("timestamp", "state", "load", "running", "waiting", "kv_cache_usage", "prefix_cache_queries", "prefix_cache_hits", "generation_tokens", "prompt_tokens", "prefill_tokens_per_s", "decode_tokens_per_s", "agent_inflight", "engine_restarts", "state_detail", "group_epoch", "agent_instance", "engine_crashes", "draining", "memory_available_bytes", "health_failures")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_QUERIES_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    AGENT_INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    ENGINE_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    STATE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    GROUP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    AGENT_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_CRASHES_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FAILURES_FIELD_NUMBER: _ClassVar[int]
    timestamp: float
    state: EngineState
    load: Load
    running: int
    waiting: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    generation_tokens: int
    prompt_tokens: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    agent_inflight: int
    engine_restarts: int
    state_detail: str
    group_epoch: str
    agent_instance: str
    engine_crashes: int
    draining: bool
    memory_available_bytes: int
    health_failures: int
    def __init__(self, timestamp: _Optional[float] = ..., state: _Optional[_Union[EngineState, str]] = ..., load: _Optional[_Union[Load, _Mapping]] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., kv_cache_usage: _Optional[float] = ..., prefix_cache_queries: _Optional[int] = ..., prefix_cache_hits: _Optional[int] = ..., generation_tokens: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., prefill_tokens_per_s: _Optional[float] = ..., decode_tokens_per_s: _Optional[float] = ..., agent_inflight: _Optional[int] = ..., engine_restarts: _Optional[int] = ..., state_detail: _Optional[str] = ..., group_epoch: _Optional[str] = ..., agent_instance: _Optional[str] = ..., engine_crashes: _Optional[int] = ..., draining: _Optional[bool] = ..., memory_available_bytes: _Optional[int] = ..., health_failures: _Optional[int] = ...) -> None: ...
