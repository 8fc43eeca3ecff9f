from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TelemetryEvent(_message.Message):
    __slots__ = ("seq", "ts_unix_ms", "kind", "name", "model", "latency_ms", "first_token_ms", "tokens_in", "tokens_out", "outcome", "detail", "adapter", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TS_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_IN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_OUT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    seq: int
    ts_unix_ms: int
    kind: str
    name: str
    model: str
    latency_ms: float
    first_token_ms: float
    tokens_in: int
    tokens_out: int
    outcome: str
    detail: str
    adapter: str
    values: _containers.ScalarMap[str, float]
    def __init__(self, seq: _Optional[int] = ..., ts_unix_ms: _Optional[int] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ..., model: _Optional[str] = ..., latency_ms: _Optional[float] = ..., first_token_ms: _Optional[float] = ..., tokens_in: _Optional[int] = ..., tokens_out: _Optional[int] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ..., adapter: _Optional[str] = ..., values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class TelemetryBatch(_message.Message):
    __slots__ = ("device_id", "events")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    events: _containers.RepeatedCompositeFieldContainer[TelemetryEvent]
    def __init__(self, device_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[TelemetryEvent, _Mapping]]] = ...) -> None: ...

class UploadAck(_message.Message):
    __slots__ = ("accepted", "duplicates", "rejected", "detail", "clamped")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CLAMPED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    rejected: int
    detail: str
    clamped: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., rejected: _Optional[int] = ..., detail: _Optional[str] = ..., clamped: _Optional[int] = ...) -> None: ...
