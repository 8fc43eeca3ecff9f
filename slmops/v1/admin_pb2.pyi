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

class BlobList(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sha256: _Optional[_Iterable[str]] = ...) -> None: ...

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
    __slots__ = ("uses", "ttl_seconds", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USES_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    uses: int
    ttl_seconds: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, uses: _Optional[int] = ..., ttl_seconds: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EnrollToken(_message.Message):
    __slots__ = ("token", "expires_unix_ms", "uses", "token_id")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_unix_ms: int
    uses: int
    token_id: str
    def __init__(self, token: _Optional[str] = ..., expires_unix_ms: _Optional[int] = ..., uses: _Optional[int] = ..., token_id: _Optional[str] = ...) -> None: ...

class EnrollTokenInfo(_message.Message):
    __slots__ = ("token_id", "uses_left", "uses", "expires_unix_ms", "created_unix_ms", "labels", "revoked", "created_by")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    USES_LEFT_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    uses_left: int
    uses: int
    expires_unix_ms: int
    created_unix_ms: int
    labels: _containers.ScalarMap[str, str]
    revoked: bool
    created_by: str
    def __init__(self, token_id: _Optional[str] = ..., uses_left: _Optional[int] = ..., uses: _Optional[int] = ..., expires_unix_ms: _Optional[int] = ..., created_unix_ms: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., revoked: _Optional[bool] = ..., created_by: _Optional[str] = ...) -> None: ...

class EnrollTokenList(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[EnrollTokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[EnrollTokenInfo, _Mapping]]] = ...) -> None: ...

class TokenRef(_message.Message):
    __slots__ = ("token_id",)
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    def __init__(self, token_id: _Optional[str] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("device_id", "name", "current", "desired", "state", "message", "last_seen_unix_ms", "hardware", "agent_version", "labels", "pinned")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    name: str
    current: _common_pb2.ModelRef
    desired: _common_pb2.ModelRef
    state: str
    message: str
    last_seen_unix_ms: int
    hardware: _common_pb2.Hardware
    agent_version: str
    labels: _containers.ScalarMap[str, str]
    pinned: _common_pb2.ModelRef
    def __init__(self, device_id: _Optional[str] = ..., name: _Optional[str] = ..., current: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., desired: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., state: _Optional[str] = ..., message: _Optional[str] = ..., last_seen_unix_ms: _Optional[int] = ..., hardware: _Optional[_Union[_common_pb2.Hardware, _Mapping]] = ..., agent_version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., pinned: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

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

class Selector(_message.Message):
    __slots__ = ("labels", "hardware_classes", "all_devices")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_CLASSES_FIELD_NUMBER: _ClassVar[int]
    ALL_DEVICES_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    hardware_classes: _containers.RepeatedScalarFieldContainer[str]
    all_devices: bool
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ..., hardware_classes: _Optional[_Iterable[str]] = ..., all_devices: _Optional[bool] = ...) -> None: ...

class Wave(_message.Message):
    __slots__ = ("devices", "percent")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    devices: int
    percent: float
    def __init__(self, devices: _Optional[int] = ..., percent: _Optional[float] = ...) -> None: ...

class HealthGate(_message.Message):
    __slots__ = ("min_success_ratio", "max_failure_ratio", "max_error_rate", "min_requests", "max_p95_latency_ms", "min_soak_seconds", "install_timeout_seconds", "min_golden_pass_ratio", "min_feedback_score")
    MIN_SUCCESS_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURE_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_P95_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_SOAK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INSTALL_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MIN_GOLDEN_PASS_RATIO_FIELD_NUMBER: _ClassVar[int]
    MIN_FEEDBACK_SCORE_FIELD_NUMBER: _ClassVar[int]
    min_success_ratio: float
    max_failure_ratio: float
    max_error_rate: float
    min_requests: int
    max_p95_latency_ms: float
    min_soak_seconds: float
    install_timeout_seconds: float
    min_golden_pass_ratio: float
    min_feedback_score: float
    def __init__(self, min_success_ratio: _Optional[float] = ..., max_failure_ratio: _Optional[float] = ..., max_error_rate: _Optional[float] = ..., min_requests: _Optional[int] = ..., max_p95_latency_ms: _Optional[float] = ..., min_soak_seconds: _Optional[float] = ..., install_timeout_seconds: _Optional[float] = ..., min_golden_pass_ratio: _Optional[float] = ..., min_feedback_score: _Optional[float] = ...) -> None: ...

class CreateRolloutRequest(_message.Message):
    __slots__ = ("model", "selector", "strategy", "canary", "waves", "max_devices_per_minute", "gate", "variants")
    class VariantsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    WAVES_FIELD_NUMBER: _ClassVar[int]
    MAX_DEVICES_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    selector: Selector
    strategy: str
    canary: Wave
    waves: _containers.RepeatedCompositeFieldContainer[Wave]
    max_devices_per_minute: int
    gate: HealthGate
    variants: _containers.ScalarMap[str, str]
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., selector: _Optional[_Union[Selector, _Mapping]] = ..., strategy: _Optional[str] = ..., canary: _Optional[_Union[Wave, _Mapping]] = ..., waves: _Optional[_Iterable[_Union[Wave, _Mapping]]] = ..., max_devices_per_minute: _Optional[int] = ..., gate: _Optional[_Union[HealthGate, _Mapping]] = ..., variants: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RolloutRef(_message.Message):
    __slots__ = ("rollout_id",)
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    def __init__(self, rollout_id: _Optional[str] = ...) -> None: ...

class RolloutDevice(_message.Message):
    __slots__ = ("device_id", "target", "previous", "wave", "outcome", "why")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    WAVE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    target: _common_pb2.ModelRef
    previous: _common_pb2.ModelRef
    wave: int
    outcome: str
    why: str
    def __init__(self, device_id: _Optional[str] = ..., target: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., previous: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., wave: _Optional[int] = ..., outcome: _Optional[str] = ..., why: _Optional[str] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("rollout_id", "model", "selector", "waves", "max_devices_per_minute", "gate", "variants", "status", "wave", "reason", "created_unix_ms", "updated_unix_ms", "created_by", "assigned", "succeeded", "failed", "pending", "devices")
    class VariantsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    WAVES_FIELD_NUMBER: _ClassVar[int]
    MAX_DEVICES_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    WAVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    model: _common_pb2.ModelRef
    selector: Selector
    waves: _containers.RepeatedCompositeFieldContainer[Wave]
    max_devices_per_minute: int
    gate: HealthGate
    variants: _containers.ScalarMap[str, str]
    status: str
    wave: int
    reason: str
    created_unix_ms: int
    updated_unix_ms: int
    created_by: str
    assigned: int
    succeeded: int
    failed: int
    pending: int
    devices: _containers.RepeatedCompositeFieldContainer[RolloutDevice]
    def __init__(self, rollout_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., selector: _Optional[_Union[Selector, _Mapping]] = ..., waves: _Optional[_Iterable[_Union[Wave, _Mapping]]] = ..., max_devices_per_minute: _Optional[int] = ..., gate: _Optional[_Union[HealthGate, _Mapping]] = ..., variants: _Optional[_Mapping[str, str]] = ..., status: _Optional[str] = ..., wave: _Optional[int] = ..., reason: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., updated_unix_ms: _Optional[int] = ..., created_by: _Optional[str] = ..., assigned: _Optional[int] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., pending: _Optional[int] = ..., devices: _Optional[_Iterable[_Union[RolloutDevice, _Mapping]]] = ...) -> None: ...

class RolloutList(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ...) -> None: ...

class PinDeviceRequest(_message.Message):
    __slots__ = ("device_id", "model")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    model: _common_pb2.ModelRef
    def __init__(self, device_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class SetDeviceLabelsRequest(_message.Message):
    __slots__ = ("device_id", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, device_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DeviceRef(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class CreateApiTokenRequest(_message.Message):
    __slots__ = ("role", "name")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    role: str
    name: str
    def __init__(self, role: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ApiToken(_message.Message):
    __slots__ = ("token", "role", "name", "token_id")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    token: str
    role: str
    name: str
    token_id: str
    def __init__(self, token: _Optional[str] = ..., role: _Optional[str] = ..., name: _Optional[str] = ..., token_id: _Optional[str] = ...) -> None: ...

class ApiTokenInfo(_message.Message):
    __slots__ = ("token_id", "role", "name", "created_unix_ms", "revoked", "created_by")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    role: str
    name: str
    created_unix_ms: int
    revoked: bool
    created_by: str
    def __init__(self, token_id: _Optional[str] = ..., role: _Optional[str] = ..., name: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., revoked: _Optional[bool] = ..., created_by: _Optional[str] = ...) -> None: ...

class ApiTokenList(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[ApiTokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[ApiTokenInfo, _Mapping]]] = ...) -> None: ...

class AuditQuery(_message.Message):
    __slots__ = ("limit", "action", "actor", "since_unix_ms")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    limit: int
    action: str
    actor: str
    since_unix_ms: int
    def __init__(self, limit: _Optional[int] = ..., action: _Optional[str] = ..., actor: _Optional[str] = ..., since_unix_ms: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("ts_unix_ms", "who", "role", "action", "target", "result", "detail")
    TS_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ts_unix_ms: int
    who: str
    role: str
    action: str
    target: str
    result: str
    detail: str
    def __init__(self, ts_unix_ms: _Optional[int] = ..., who: _Optional[str] = ..., role: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., result: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class AuditList(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

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

class SubmitPipelineRequest(_message.Message):
    __slots__ = ("recipe_yaml", "base_dir")
    RECIPE_YAML_FIELD_NUMBER: _ClassVar[int]
    BASE_DIR_FIELD_NUMBER: _ClassVar[int]
    recipe_yaml: str
    base_dir: str
    def __init__(self, recipe_yaml: _Optional[str] = ..., base_dir: _Optional[str] = ...) -> None: ...

class PipelineRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListPipelinesRequest(_message.Message):
    __slots__ = ("status", "limit")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    status: str
    limit: int
    def __init__(self, status: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class PipelineStage(_message.Message):
    __slots__ = ("index", "kind", "status", "key", "inputs_json", "outputs_json", "metrics_json", "message", "started_unix_ms", "finished_unix_ms", "attempts", "cached")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    index: int
    kind: str
    status: str
    key: str
    inputs_json: str
    outputs_json: str
    metrics_json: str
    message: str
    started_unix_ms: int
    finished_unix_ms: int
    attempts: int
    cached: bool
    def __init__(self, index: _Optional[int] = ..., kind: _Optional[str] = ..., status: _Optional[str] = ..., key: _Optional[str] = ..., inputs_json: _Optional[str] = ..., outputs_json: _Optional[str] = ..., metrics_json: _Optional[str] = ..., message: _Optional[str] = ..., started_unix_ms: _Optional[int] = ..., finished_unix_ms: _Optional[int] = ..., attempts: _Optional[int] = ..., cached: _Optional[bool] = ...) -> None: ...

class Pipeline(_message.Message):
    __slots__ = ("job_id", "name", "status", "reason", "submitted_by", "created_unix_ms", "updated_unix_ms", "stages", "published", "rollout_id", "resumes", "recipe_yaml")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    RESUMES_FIELD_NUMBER: _ClassVar[int]
    RECIPE_YAML_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    status: str
    reason: str
    submitted_by: str
    created_unix_ms: int
    updated_unix_ms: int
    stages: _containers.RepeatedCompositeFieldContainer[PipelineStage]
    published: str
    rollout_id: str
    resumes: int
    recipe_yaml: str
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., submitted_by: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., updated_unix_ms: _Optional[int] = ..., stages: _Optional[_Iterable[_Union[PipelineStage, _Mapping]]] = ..., published: _Optional[str] = ..., rollout_id: _Optional[str] = ..., resumes: _Optional[int] = ..., recipe_yaml: _Optional[str] = ...) -> None: ...

class PipelineList(_message.Message):
    __slots__ = ("pipelines",)
    PIPELINES_FIELD_NUMBER: _ClassVar[int]
    pipelines: _containers.RepeatedCompositeFieldContainer[Pipeline]
    def __init__(self, pipelines: _Optional[_Iterable[_Union[Pipeline, _Mapping]]] = ...) -> None: ...

class PipelineLogsRequest(_message.Message):
    __slots__ = ("job_id", "after_id", "follow")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_id: int
    follow: bool
    def __init__(self, job_id: _Optional[str] = ..., after_id: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class PipelineLogLine(_message.Message):
    __slots__ = ("id", "stage", "ts_unix_ms", "line")
    ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TS_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    id: int
    stage: int
    ts_unix_ms: int
    line: str
    def __init__(self, id: _Optional[int] = ..., stage: _Optional[int] = ..., ts_unix_ms: _Optional[int] = ..., line: _Optional[str] = ...) -> None: ...
