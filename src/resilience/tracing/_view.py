"""A plain-text view of finished spans, for demos, docs and test failures.

Reading a trace should not need a Jaeger screenshot: `format_trace` draws the
spans an in-memory exporter collected as an indented tree, one trace per
block, with service, kind, offset from the start of the trace and duration.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["format_trace"]


def _kind(span: Any) -> str:
    kind = getattr(span, "kind", None)
    name = getattr(kind, "name", None)
    return str(name if name is not None else kind or "INTERNAL")


def _service(span: Any) -> str:
    resource = getattr(span, "resource", None)
    attributes: Mapping[str, Any] = getattr(resource, "attributes", None) or {}
    return str(attributes.get("service.name", "?"))


def _is_error(span: Any) -> bool:
    status = getattr(span, "status", None)
    code = getattr(status, "status_code", None)
    return getattr(code, "name", None) == "ERROR"


def _ms(nanos: int) -> str:
    return f"{nanos / 1e6:.1f} ms"


def format_trace(
    spans: Iterable[Any],
    *,
    attributes: Iterable[str] = (),
    timings: bool = True,
) -> str:
    """Render finished spans as one indented tree per trace.

    Works on any objects shaped like the SDK's ``ReadableSpan`` (``name``,
    ``context``, ``parent``, ``kind``, ``start_time``, ``end_time``,
    ``resource``, ``status``, ``links``, ``attributes``); the SDK itself is
    not imported. Children are ordered by start time; a span whose parent was
    not recorded (it lives in another process) is drawn as a root marked
    ``(remote parent)``. Span links are shown as ``↪ linked to``.

    Args:
        spans: e.g. ``InMemorySpanExporter().get_finished_spans()``.
        attributes: attribute names to print after each span, when present.
        timings: print offsets and durations; turn off for stable doc output.
    """
    spans = list(spans)
    if not spans:
        return "(no spans)"
    by_id = {(s.context.trace_id, s.context.span_id): s for s in spans}
    names = {key: s.name for key, s in by_id.items()}
    children: dict[tuple[int, int], list[Any]] = defaultdict(list)
    roots: dict[int, list[Any]] = defaultdict(list)
    for span in spans:
        trace_id = span.context.trace_id
        parent = span.parent
        if parent is not None and (trace_id, parent.span_id) in by_id:
            children[(trace_id, parent.span_id)].append(span)
        else:
            roots[trace_id].append(span)

    def start(span: Any) -> int:
        return int(span.start_time or 0)

    wanted = tuple(attributes)
    lines: list[str] = []
    ordered = sorted(roots.items(), key=lambda item: min(start(s) for s in item[1]))
    for trace_id, trace_roots in ordered:
        trace_start = min(start(s) for s in trace_roots)
        lines.append(f"trace {trace_id:032x}")

        def draw(span: Any, prefix: str, last: bool, *, trace_start: int = trace_start) -> None:
            branch = "└─ " if last else "├─ "
            parts = [f"{span.name}", f"[{_kind(span)}]", _service(span)]
            if timings:
                end = int(span.end_time or span.start_time or 0)
                parts.append(f"+{_ms(start(span) - trace_start)}")
                parts.append(_ms(end - start(span)))
            if _is_error(span):
                parts.append("ERROR")
            parent = span.parent
            if parent is not None and (span.context.trace_id, parent.span_id) not in by_id:
                parts.append("(remote parent)")
            span_attributes: Mapping[str, Any] = getattr(span, "attributes", None) or {}
            parts.extend(f"{k}={span_attributes[k]}" for k in wanted if k in span_attributes)
            lines.append(prefix + branch + "  ".join(parts))
            inner = prefix + ("   " if last else "│  ")
            for link in getattr(span, "links", None) or ():
                target = (link.context.trace_id, link.context.span_id)
                label = names.get(target, f"{link.context.span_id:016x}")
                lines.append(f"{inner}↪ linked to {label} (trace {link.context.trace_id:032x})")
            kids = sorted(
                children.get((span.context.trace_id, span.context.span_id), []), key=start
            )
            for index, child in enumerate(kids):
                draw(child, inner, index == len(kids) - 1)

        sorted_roots = sorted(trace_roots, key=start)
        for index, root in enumerate(sorted_roots):
            draw(root, "", index == len(sorted_roots) - 1)
    return "\n".join(lines)
