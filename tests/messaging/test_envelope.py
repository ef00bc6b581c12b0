"""The message envelope: validation, the CloudEvents wire form, and garbage handling."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import ConfigurationError, MessageDecodeError
from resilience.messaging import (
    JsonCodec,
    Message,
    RawMessage,
    decode_message,
    encode_message,
    new_message_id,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
header_names = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20
).filter(lambda h: not h.startswith("ce_") and h != "content-type")


@given(
    payload=json_values,
    key=st.none() | st.text(max_size=40),
    headers=st.dictionaries(header_names, st.text(max_size=40), max_size=4),
)
def test_encode_decode_round_trip(
    payload: object, key: str | None, headers: dict[str, str]
) -> None:
    message = Message(type="order.created", payload=payload, key=key, headers=headers)
    assert decode_message(encode_message(message)) == message


def test_ids_are_uuid7_unique_and_time_ordered() -> None:
    ids = [new_message_id() for _ in range(5_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids), "ids minted in one process must sort in creation order"
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    ms = int(parsed.hex[:12], 16)
    assert abs(ms / 1000 - dt.datetime.now(dt.UTC).timestamp()) < 60


def test_wire_form_is_cloudevents_binary_mode() -> None:
    message = Message(
        type="order.created",
        key="order-1",
        payload={"n": 1},
        headers={"traceparent": "00-abc-def-01"},
    )
    raw = encode_message(message, source="orders")
    headers = dict(raw.headers)
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_id"] == message.id.encode()
    assert headers["ce_type"] == b"order.created"
    assert headers["ce_source"] == b"orders"
    assert headers["content-type"] == b"application/json"
    assert headers["traceparent"] == b"00-abc-def-01"
    assert raw.key == b"order-1"
    assert raw.value == b'{"n":1}'


def test_json_codec_encodes_common_python_types() -> None:
    class Colour(enum.Enum):
        RED = "red"

    @dataclasses.dataclass
    class Line:
        sku: str
        price: decimal.Decimal

    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    ident = uuid.UUID(int=1)
    payload = {
        "line": Line("A-1", decimal.Decimal("19.90")),
        "when": when,
        "id": ident,
        "c": Colour.RED,
    }
    decoded = JsonCodec().decode(JsonCodec().encode(payload))
    assert decoded == {
        "line": {"sku": "A-1", "price": "19.90"},
        "when": "2026-01-02T03:04:05+00:00",
        "id": str(ident),
        "c": "red",
    }


def test_unencodable_payload_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="payload"):
        encode_message(Message(type="x", payload=object()))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"type": ""}, "type"),
        ({"type": "x" * 201}, "type"),
        ({"type": "t", "id": ""}, "id"),
        ({"type": "t", "key": 42}, "key"),
        ({"type": "t", "occurred_at": dt.datetime(2026, 1, 1)}, "occurred_at"),
        ({"type": "t", "headers": {"ce_id": "x"}}, "headers"),
        ({"type": "t", "headers": {"a": 1}}, "headers"),
    ],
)
def test_invalid_messages_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Message(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def _raw(value: bytes = b"{}", **headers: bytes) -> RawMessage:
    base = {"ce_id": b"m-1", "ce_type": b"t"}
    base.update(headers)
    return RawMessage(key=None, value=value, headers=list(base.items()))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (_raw(b"{not json"), "malformed"),
        (RawMessage(key=None, value=b"{}", headers=[("ce_type", b"t")]), "missing"),
        (RawMessage(key=None, value=b"{}", headers=[("ce_id", b"x")]), "missing"),
        (_raw(ce_time=b"yesterday"), "malformed"),
        (
            RawMessage(key=b"\xff\xfe", value=b"{}", headers=[("ce_id", b"x"), ("ce_type", b"t")]),
            "UTF-8",
        ),
        (_raw(b"\x00\x01garbage"), "malformed"),
    ],
)
def test_garbage_raises_a_typed_decode_error(raw: RawMessage, match: str) -> None:
    with pytest.raises(MessageDecodeError, match=match):
        decode_message(raw)


def test_oversized_value_is_rejected_before_parsing() -> None:
    with pytest.raises(MessageDecodeError, match="over the 10-byte limit"):
        decode_message(_raw(b'{"a":"0123456789"}'), max_bytes=10)


def test_naive_time_on_the_wire_is_read_as_utc() -> None:
    decoded = decode_message(_raw(ce_time=b"2026-01-01T00:00:00"))
    assert decoded.occurred_at == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_with_headers_returns_a_copy() -> None:
    original = Message(type="t", headers={"a": "1"})
    updated = original.with_headers(b="2")
    assert original.headers == {"a": "1"}
    assert updated.headers == {"a": "1", "b": "2"}
    assert updated.id == original.id
