from slmops.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrollRequest(_message.Message):
    __slots__ = ("enroll_token", "device_name", "hardware", "agent_version", "device_public_key")
    ENROLL_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    enroll_token: str
    device_name: str
    hardware: _common_pb2.Hardware
    agent_version: str
    device_public_key: bytes
    def __init__(self, enroll_token: _Optional[str] = ..., device_name: _Optional[str] = ..., hardware: _Optional[_Union[_common_pb2.Hardware, _Mapping]] = ..., agent_version: _Optional[str] = ..., device_public_key: _Optional[bytes] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("device_id", "device_token", "trusted_root")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_ROOT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    device_token: str
    trusted_root: bytes
    def __init__(self, device_id: _Optional[str] = ..., device_token: _Optional[str] = ..., trusted_root: _Optional[bytes] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class DesiredState(_message.Message):
    __slots__ = ("model", "revision")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    revision: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class StatusReport(_message.Message):
    __slots__ = ("device_id", "current", "state", "message", "hardware")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    current: _common_pb2.ModelRef
    state: str
    message: str
    hardware: _common_pb2.Hardware
    def __init__(self, device_id: _Optional[str] = ..., current: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., state: _Optional[str] = ..., message: _Optional[str] = ..., hardware: _Optional[_Union[_common_pb2.Hardware, _Mapping]] = ...) -> None: ...
