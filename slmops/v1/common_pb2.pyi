from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Hardware(_message.Message):
    __slots__ = ("hardware_class", "execution_providers", "ram_bytes", "disk_free_bytes", "arch")
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    RAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    hardware_class: str
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    ram_bytes: int
    disk_free_bytes: int
    arch: str
    def __init__(self, hardware_class: _Optional[str] = ..., execution_providers: _Optional[_Iterable[str]] = ..., ram_bytes: _Optional[int] = ..., disk_free_bytes: _Optional[int] = ..., arch: _Optional[str] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
