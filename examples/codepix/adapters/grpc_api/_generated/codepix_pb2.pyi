from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterPixKeyRequest(_message.Message):
    __slots__ = ("kind", "key", "account_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    kind: str
    key: str
    account_id: str
    def __init__(self, kind: _Optional[str] = ..., key: _Optional[str] = ..., account_id: _Optional[str] = ...) -> None: ...

class FindPixKeyRequest(_message.Message):
    __slots__ = ("kind", "key")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    kind: str
    key: str
    def __init__(self, kind: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class DeactivatePixKeyRequest(_message.Message):
    __slots__ = ("kind", "key")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    kind: str
    key: str
    def __init__(self, kind: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class OpenAccountRequest(_message.Message):
    __slots__ = ("bank_code", "account_id", "number", "owner_name")
    BANK_CODE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    OWNER_NAME_FIELD_NUMBER: _ClassVar[int]
    bank_code: str
    account_id: str
    number: str
    owner_name: str
    def __init__(self, bank_code: _Optional[str] = ..., account_id: _Optional[str] = ..., number: _Optional[str] = ..., owner_name: _Optional[str] = ...) -> None: ...

class Bank(_message.Message):
    __slots__ = ("code", "name")
    CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    code: str
    name: str
    def __init__(self, code: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Account(_message.Message):
    __slots__ = ("id", "number", "owner_name", "bank")
    ID_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    OWNER_NAME_FIELD_NUMBER: _ClassVar[int]
    BANK_FIELD_NUMBER: _ClassVar[int]
    id: str
    number: str
    owner_name: str
    bank: Bank
    def __init__(self, id: _Optional[str] = ..., number: _Optional[str] = ..., owner_name: _Optional[str] = ..., bank: _Optional[_Union[Bank, _Mapping]] = ...) -> None: ...

class PixKeyInfo(_message.Message):
    __slots__ = ("kind", "key", "status", "account")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    key: str
    status: str
    account: Account
    def __init__(self, kind: _Optional[str] = ..., key: _Optional[str] = ..., status: _Optional[str] = ..., account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...
