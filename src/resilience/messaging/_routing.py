"""Choosing a destination (topic / stream) for each message."""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from typing import Final

from resilience._errors import ConfigurationError

from ._message import Message

__all__ = ["TopicRouter"]

_PLACEHOLDERS: Final = frozenset({"type", "type_prefix", "type_suffix"})
_MAX_DESTINATION_LENGTH: Final = 249  # Kafka's limit; Redis has none, so the stricter wins


def _check_template(template: str) -> None:
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigurationError("default", f"invalid template {template!r}: {exc}") from exc
    unknown = sorted({name for name in fields if name not in _PLACEHOLDERS})
    if unknown:
        raise ConfigurationError(
            "default",
            f"unknown placeholder(s) {unknown} in {template!r}; use {sorted(_PLACEHOLDERS)}",
        )


class TopicRouter:
    """Maps a message type to a destination: explicit entries first, then a rule.

    The default rule, ``"{type_prefix}"``, sends ``order.created`` and
    ``order.paid`` to the same ``order`` destination. That matters: ordering is
    only kept *within* a destination, so all events of one aggregate must share
    one if a consumer is to see ``created`` before ``paid``.

    Args:
        mapping: exact ``type -> destination`` entries, checked first.
        default: a template using ``{type}`` (``order.created``),
            ``{type_prefix}`` (``order``) and ``{type_suffix}`` (``created``),
            e.g. ``"prod.{type_prefix}.events"``; or a callable taking the message.
    """

    __slots__ = ("_default", "_mapping", "_template")

    def __init__(
        self,
        mapping: Mapping[str, str] | None = None,
        *,
        default: str | Callable[[Message], str] = "{type_prefix}",
    ) -> None:
        entries = dict(mapping or {})
        for message_type, destination in entries.items():
            if not isinstance(destination, str) or not destination:
                raise ConfigurationError(
                    "mapping", f"destination for {message_type!r} must be a non-empty string"
                )
        self._mapping = entries
        if isinstance(default, str):
            if not default:
                raise ConfigurationError("default", "must be a non-empty template or a callable")
            _check_template(default)
            self._template: str | None = default
            self._default: Callable[[Message], str] | None = None
        elif callable(default):
            self._template = None
            self._default = default
        else:
            raise ConfigurationError("default", "must be a template string or a callable")

    def __call__(self, message: Message) -> str:
        destination = self._mapping.get(message.type)
        if destination is None:
            if self._template is not None:
                prefix, _, suffix = message.type.partition(".")
                destination = self._template.format(
                    type=message.type, type_prefix=prefix, type_suffix=suffix or prefix
                )
            else:
                assert self._default is not None
                destination = self._default(message)
        if not isinstance(destination, str) or not destination:
            raise ConfigurationError(
                "router", f"produced an empty destination for type {message.type!r}"
            )
        if len(destination) > _MAX_DESTINATION_LENGTH:
            raise ConfigurationError(
                "router",
                f"destination {destination[:40]!r}... is over {_MAX_DESTINATION_LENGTH} characters",
            )
        return destination

    def __repr__(self) -> str:
        rule = self._template if self._template is not None else self._default
        return f"TopicRouter(mapping={self._mapping!r}, default={rule!r})"
