"""The main demo on embedded defaults: no servers, nothing to install but the project.

Run it with ``make demo`` (or ``python -m examples.demo`` from the project root).
"""

from __future__ import annotations

from resilience import MessageDecodeError
from resilience.messaging import Message, RawMessage, decode_message, encode_message


def main() -> None:
    print("resilience demo: the message envelope on the wire\n")
    order = Message(type="order.created", key="order-42", payload={"total_cents": 1990})
    raw = encode_message(order)
    print(f"  published {order.type} id={order.id} key={order.key}")
    for name, value in raw.headers:
        print(f"    header {name:15} {value.decode()}")
    assert decode_message(raw) == order
    print("  decoded it back, identical")

    poison = RawMessage(key=b"order-43", value=b"{not json", headers=raw.headers)
    try:
        decode_message(poison)
    except MessageDecodeError as exc:
        print(f"  poison message rejected with a typed error (dead-letter it): {exc}")


if __name__ == "__main__":
    main()
