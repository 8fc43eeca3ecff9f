from slmops.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BlobUpload(_message.Message):
    __slots__ = ("data", "expected_sha256")
    DATA_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SHA256_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    expected_sha256: str
    def __init__(self, data: _Optional[bytes] = ..., expected_sha256: _Optional[str] = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("sha256", "size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class FileEntry(_message.Message):
    __slots__ = ("path", "sha256", "size")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    size: int
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("manifest_json",)
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    manifest_json: bytes
    def __init__(self, manifest_json: _Optional[bytes] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("model", "manifest_sha256")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    manifest_sha256: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., manifest_sha256: _Optional[str] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("model", "precision", "total_bytes", "created_unix_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    precision: str
    total_bytes: int
    created_unix_ms: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., precision: _Optional[str] = ..., total_bytes: _Optional[int] = ..., created_unix_ms: _Optional[int] = ...) -> None: ...

class ModelList(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...

class SetDesiredRequest(_message.Message):
    __slots__ = ("model", "device_ids")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., device_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SetDesiredResponse(_message.Message):
    __slots__ = ("devices_updated",)
    DEVICES_UPDATED_FIELD_NUMBER: _ClassVar[int]
    devices_updated: int
    def __init__(self, devices_updated: _Optional[int] = ...) -> None: ...

class CreateEnrollTokenRequest(_message.Message):
    __slots__ = ("uses", "ttl_seconds")
    USES_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    uses: int
    ttl_seconds: int
    def __init__(self, uses: _Optional[int] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class EnrollToken(_message.Message):
    __slots__ = ("token", "expires_unix_ms", "uses")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_unix_ms: int
    uses: int
    def __init__(self, token: _Optional[str] = ..., expires_unix_ms: _Optional[int] = ..., uses: _Optional[int] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("device_id", "name", "current", "desired", "state", "message", "last_seen_unix_ms", "hardware", "agent_version")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    name: str
    current: _common_pb2.ModelRef
    desired: _common_pb2.ModelRef
    state: str
    message: str
    last_seen_unix_ms: int
    hardware: _common_pb2.Hardware
    agent_version: str
    def __init__(self, device_id: _Optional[str] = ..., name: _Optional[str] = ..., current: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., desired: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., state: _Optional[str] = ..., message: _Optional[str] = ..., last_seen_unix_ms: _Optional[int] = ..., hardware: _Optional[_Union[_common_pb2.Hardware, _Mapping]] = ..., agent_version: _Optional[str] = ...) -> None: ...

class DeviceList(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class TelemetryQuery(_message.Message):
    __slots__ = ("device_id", "since_unix_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    since_unix_ms: int
    def __init__(self, device_id: _Optional[str] = ..., since_unix_ms: _Optional[int] = ...) -> None: ...

class DeviceTelemetry(_message.Message):
    __slots__ = ("device_id", "requests", "errors", "p50_latency_ms", "p95_latency_ms", "tokens_in", "tokens_out", "tokens_per_s", "events")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    P50_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    P95_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_IN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_OUT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    requests: int
    errors: int
    p50_latency_ms: float
    p95_latency_ms: float
    tokens_in: int
    tokens_out: int
    tokens_per_s: float
    events: int
    def __init__(self, device_id: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., p50_latency_ms: _Optional[float] = ..., p95_latency_ms: _Optional[float] = ..., tokens_in: _Optional[int] = ..., tokens_out: _Optional[int] = ..., tokens_per_s: _Optional[float] = ..., events: _Optional[int] = ...) -> None: ...

class TelemetrySummary(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[DeviceTelemetry]
    def __init__(self, devices: _Optional[_Iterable[_Union[DeviceTelemetry, _Mapping]]] = ...) -> None: ...

class RollupQuery(_message.Message):
    __slots__ = ("device_id", "since_unix_ms", "until_unix_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    since_unix_ms: int
    until_unix_ms: int
    def __init__(self, device_id: _Optional[str] = ..., since_unix_ms: _Optional[int] = ..., until_unix_ms: _Optional[int] = ...) -> None: ...

class MinuteRollup(_message.Message):
    __slots__ = ("device_id", "minute_unix_ms", "requests", "errors", "p50_latency_ms", "p95_latency_ms", "tokens_per_s", "tokens_out", "cpu_percent", "rss_bytes", "golden_failed")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MINUTE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    P50_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    P95_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    TOKENS_OUT_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    GOLDEN_FAILED_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    minute_unix_ms: int
    requests: int
    errors: int
    p50_latency_ms: float
    p95_latency_ms: float
    tokens_per_s: float
    tokens_out: int
    cpu_percent: float
    rss_bytes: float
    golden_failed: int
    def __init__(self, device_id: _Optional[str] = ..., minute_unix_ms: _Optional[int] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., p50_latency_ms: _Optional[float] = ..., p95_latency_ms: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., tokens_out: _Optional[int] = ..., cpu_percent: _Optional[float] = ..., rss_bytes: _Optional[float] = ..., golden_failed: _Optional[int] = ...) -> None: ...

class RollupList(_message.Message):
    __slots__ = ("minutes",)
    MINUTES_FIELD_NUMBER: _ClassVar[int]
    minutes: _containers.RepeatedCompositeFieldContainer[MinuteRollup]
    def __init__(self, minutes: _Optional[_Iterable[_Union[MinuteRollup, _Mapping]]] = ...) -> None: ...

class EventQuery(_message.Message):
    __slots__ = ("device_id", "since_unix_ms", "limit")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    since_unix_ms: int
    limit: int
    def __init__(self, device_id: _Optional[str] = ..., since_unix_ms: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class TelemetryRecord(_message.Message):
    __slots__ = ("device_id", "seq", "ts_unix_ms", "kind", "name", "model", "outcome", "detail", "latency_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TS_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    seq: int
    ts_unix_ms: int
    kind: str
    name: str
    model: str
    outcome: str
    detail: str
    latency_ms: float
    def __init__(self, device_id: _Optional[str] = ..., seq: _Optional[int] = ..., ts_unix_ms: _Optional[int] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ..., model: _Optional[str] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class EventList(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TelemetryRecord]
    def __init__(self, events: _Optional[_Iterable[_Union[TelemetryRecord, _Mapping]]] = ...) -> None: ...
