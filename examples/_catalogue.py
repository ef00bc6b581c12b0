"""A message catalogue both example systems publish, rendered into the docs.

Each example declares its events once, in ``examples/<system>/catalogue.py``,
as `EventSpec` values built from the same payload models and topic names the
services use at run time, and a test replays a run of the system against it.
The docs hook renders the declaration, so the page cannot drift from the code.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

__all__ = ["EventSpec", "render_catalogue"]


@dataclass(frozen=True)
class EventSpec:
    """One event type: who emits it, where it goes, who reacts, what it carries."""

    type: str
    topic: str
    producer: str
    consumers: tuple[str, ...]
    payload: builtins.type[Any]
    """A pydantic model, dataclass or TypedDict: the schema is derived from it."""
    summary: str

    def __post_init__(self) -> None:
        if not self.type or not self.topic or not self.producer:
            raise ValueError("an event needs a type, a topic and a producer")

    def json_schema(self) -> dict[str, Any]:
        return TypeAdapter(self.payload).json_schema()


def _type_of(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in prop:
        return " or ".join(_type_of(p, defs) for p in prop["anyOf"])
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type_of(prop.get('items', {}), defs)}"
    if "enum" in prop:
        return " / ".join(f"`{v}`" for v in prop["enum"])
    if "format" in prop:
        return f"{kind} ({prop['format']})"
    return str(kind)


def _fields(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> list[str]:
    required = set(schema.get("required", ()))
    rows = ["| field | type | required | description |", "|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        description = str(prop.get("description", "")).replace("\n", " ")
        mark = "yes" if name in required else "no"
        rows.append(f"| `{name}` | {_type_of(prop, defs)} | {mark} | {description} |")
    return rows


def render_catalogue(events: Iterable[EventSpec]) -> str:
    """Markdown: an overview table, then each event's payload fields."""
    events = sorted(events, key=lambda e: (e.topic, e.type))
    lines = [
        "| event type | topic | producer | consumers | summary |",
        "|---|---|---|---|---|",
    ]
    for event in events:
        consumers = ", ".join(event.consumers) or "(none yet)"
        lines.append(
            f"| [`{event.type}`](#{event.type.replace('.', '')}) | `{event.topic}` "
            f"| {event.producer} | {consumers} | {event.summary} |"
        )
    for event in events:
        schema = event.json_schema()
        defs: Mapping[str, Any] = schema.get("$defs", {})
        lines += ["", f"#### `{event.type}`", "", event.summary, ""]
        lines += _fields(schema, defs)
        for name, nested in defs.items():
            lines += ["", f"`{name}`:", ""]
            lines += _fields(nested, defs)
    return "\n".join(lines)
