"""The ``Idempotency-Key`` HTTP header for any ASGI app (Starlette, FastAPI, …).

Implements the IETF HTTPAPI draft "The Idempotency-Key HTTP Header Field": the
first request with a key runs and its response is stored; repeats get that
response again with ``Idempotent-Replayed: true``; a repeat while the first is
in flight gets 409, a key reused for a different request 422, a missing (when
required) or malformed key 400 — errors as RFC 9457 ``application/problem+json``.
Pure ASGI: nothing from Starlette is imported.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, MutableMapping
from typing import Any

from resilience._errors import ConfigurationError, IdempotencyError

from . import _core
from ._core import JsonSerializer
from ._heartbeat import AsyncLease
from ._store import (
    AsyncIdempotencyStore,
    Claimed,
    Completed,
    IdempotencyStore,
    InProgress,
    Mismatch,
    as_async_store,
)

__all__ = ["IdempotencyMiddleware", "authorization_principal"]

_log = logging.getLogger("resilience.idempotency")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_KEY_RE = re.compile(r"[\x20-\x7e]{1,255}")
_SERIALIZER = JsonSerializer()
_NOT_STORED = b"response not stored for replay (streaming or larger than max_response_bytes)"


def authorization_principal(scope: Scope) -> str:
    """The default principal: a digest of the ``Authorization`` header (or ``anonymous``).

    Keys are scoped by principal, so one client can never replay another
    client's response by guessing its key. Use your own function when the
    identity lives elsewhere (a session cookie, a verified JWT subject, mTLS).
    """
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return hashlib.sha256(value).hexdigest()[:32]
    return "anonymous"


def _default_replayable(status: int) -> bool:
    return (200 <= status < 300) or (400 <= status < 500 and status not in {409, 429})


class IdempotencyMiddleware:
    """Deduplicate unsafe HTTP requests by their ``Idempotency-Key`` header.

    Args:
        app: the ASGI app to protect.
        store: any idempotency store (async stores avoid a thread hop per request).
        methods: HTTP methods to protect (default ``POST`` and ``PATCH``).
        routes: regular expressions; when given, only paths matching one are protected.
        required: answer 400 to protected requests without the header.
        principal: ``scope -> str`` naming the client; default `authorization_principal`.
        ttl: how long responses are replayed.
        in_progress_ttl: how long a claim holds without a heartbeat (the
            heartbeat renews it while the app runs).
        replay_statuses: ``status -> bool``, which responses are stored; default
            2xx and 4xx except 409 and 429. Others release the key for a retry.
        max_response_bytes: responses without ``content-length`` or larger than
            this are streamed through unstored, with an ``Idempotency-Warning``
            header, and the key is released.
        max_request_bytes: protected request bodies are buffered (to fingerprint
            them before the app runs); larger ones are refused with 413.
    """

    __slots__ = (
        "_principal",
        "_replayable",
        "_routes",
        "_store",
        "app",
        "in_progress_ttl",
        "max_request_bytes",
        "max_response_bytes",
        "methods",
        "namespace",
        "required",
        "ttl",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: IdempotencyStore | AsyncIdempotencyStore,
        methods: Collection[str] = ("POST", "PATCH"),
        routes: Iterable[str | re.Pattern[str]] | None = None,
        required: bool = False,
        principal: Callable[[Scope], str] = authorization_principal,
        ttl: float = 86_400.0,
        in_progress_ttl: float = 60.0,
        replay_statuses: Callable[[int], bool] = _default_replayable,
        max_response_bytes: int = 1_000_000,
        max_request_bytes: int = 10_000_000,
        namespace: str = "http",
    ) -> None:
        if not isinstance(store, IdempotencyStore | AsyncIdempotencyStore):
            raise ConfigurationError("store", f"{store!r} is not an idempotency store")
        if isinstance(methods, str) or not methods:
            raise ConfigurationError("methods", "must be a non-empty collection of method names")
        _core.positive("ttl", ttl)
        _core.positive("in_progress_ttl", in_progress_ttl)
        _core.positive("max_response_bytes", max_response_bytes)
        _core.positive("max_request_bytes", max_request_bytes)
        if in_progress_ttl > ttl:
            raise ConfigurationError("in_progress_ttl", "must not exceed ttl")
        if not callable(principal):
            raise ConfigurationError("principal", "must be a callable taking the ASGI scope")
        self.app = app
        self._store = as_async_store(store)
        self.methods = frozenset(m.upper() for m in methods)
        try:
            self._routes = None if routes is None else tuple(re.compile(r) for r in routes)
        except re.error as exc:
            raise ConfigurationError("routes", f"invalid pattern: {exc}") from exc
        self.required = required
        self._principal = principal
        self.ttl = ttl
        self.in_progress_ttl = in_progress_ttl
        self._replayable = replay_statuses
        self.max_response_bytes = max_response_bytes
        self.max_request_bytes = max_request_bytes
        self.namespace = namespace

    def _protects(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] not in self.methods:
            return False
        return self._routes is None or any(r.fullmatch(scope["path"]) for r in self._routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._protects(scope):
            await self.app(scope, receive, send)
            return
        raw = None
        for name, value in scope.get("headers", ()):
            if name == b"idempotency-key":
                raw = value
                break
        if raw is None:
            if self.required:
                await _problem(
                    send,
                    400,
                    "Idempotency-Key required",
                    "this endpoint requires an Idempotency-Key header",
                )
                return
            await self.app(scope, receive, send)
            return
        key = _parse_key(raw)
        if key is None:
            await _problem(
                send,
                400,
                "Invalid Idempotency-Key",
                "the key must be 1 to 255 printable ASCII characters",
            )
            return
        chunks: list[bytes] = []
        body_hash = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            body_hash.update(chunk)
            size += len(chunk)
            if size > self.max_request_bytes:
                await _problem(
                    send,
                    413,
                    "Request too large for an idempotent request",
                    f"bodies over {self.max_request_bytes} bytes cannot be deduplicated",
                )
                return
            if not message.get("more_body", False):
                break
        request_fp = hashlib.sha256(
            b"\0".join(
                [
                    scope["method"].encode(),
                    scope.get("raw_path") or scope["path"].encode(),
                    scope.get("query_string", b""),
                    body_hash.digest(),
                ]
            )
        ).hexdigest()
        store_key = _core.scoped_key(self.namespace, self._principal(scope), key)
        token = os.urandom(16).hex()
        sent = time.monotonic()
        try:
            outcome = await self._store.aclaim(
                store_key, request_fp, token, self.in_progress_ttl, self.ttl
            )
        except IdempotencyError as exc:
            _log.error("idempotency store failed for key %r: %s", key, exc)
            await _problem(send, 500, "Idempotency record unreadable", str(exc))
            return
        if isinstance(outcome, Completed):
            await self._replay(store_key, outcome.payload, send)
            return
        if isinstance(outcome, InProgress):
            await _problem(
                send,
                409,
                "Request in progress",
                "a request with this Idempotency-Key is still being processed; retry later",
                [(b"retry-after", str(max(1, math.ceil(outcome.retry_after))).encode())],
            )
            return
        if isinstance(outcome, Mismatch):
            await _problem(
                send,
                422,
                "Idempotency-Key reused",
                "this Idempotency-Key was already used with a different request",
            )
            return
        assert isinstance(outcome, Claimed)
        await self._run(
            scope, chunks, receive, send, store_key=store_key, token=outcome.token, sent=sent
        )

    async def _replay(self, store_key: str, payload: str, send: Send) -> None:
        try:
            ok, value = _core.decode_payload(store_key, payload, _SERIALIZER, None, ())
            if not ok or not isinstance(value, dict):
                raise TypeError("not a stored response")
            status = int(value["s"])
            headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in value["h"]]
            body = base64.b64decode(value["b"], validate=True)
        except (IdempotencyError, KeyError, TypeError, ValueError) as exc:
            _log.error("corrupted idempotency record %r: %s", store_key, exc)
            await _problem(
                send, 500, "Idempotency record unreadable", "the stored response is corrupted"
            )
            return
        headers.append((b"idempotent-replayed", b"true"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _run(
        self,
        scope: Scope,
        chunks: list[bytes],
        receive: Receive,
        send: Send,
        *,
        store_key: str,
        token: str,
        sent: float,
    ) -> None:
        pending = list(chunks)

        async def replay_receive() -> Message:
            if pending:
                body = pending.pop(0)
                return {"type": "http.request", "body": body, "more_body": bool(pending)}
            return await receive()  # the body is consumed: now only a disconnect can come

        lease = AsyncLease(
            lambda: self._store.arenew(store_key, token, self.in_progress_ttl),
            self.in_progress_ttl / 3,
            self.in_progress_ttl,
            sent,
        )
        state: dict[str, Any] = {"status": None, "headers": None, "store": True, "settled": False}
        body: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                length = next((v for n, v in headers if n.lower() == b"content-length"), None)
                if length is None or not length.isdigit() or int(length) > self.max_response_bytes:
                    state["store"] = False
                    headers.append((b"idempotency-warning", _NOT_STORED))
                    message = {**message, "headers": headers}
                state["status"], state["headers"] = message["status"], headers
            elif message["type"] == "http.response.body" and state["store"]:
                body.append(message.get("body", b""))
                if not message.get("more_body", False) and self._replayable(state["status"]):
                    # Stored before the last chunk goes out: a retry sent the moment the
                    # client has the whole response finds the replay, never a 409.
                    lease.stop()
                    state["settled"] = True
                    await self._complete(store_key, token, state["status"], state["headers"], body)
            await send(message)

        try:
            await self.app(scope, replay_receive, capture)
        except BaseException:
            lease.stop()
            if not state["settled"]:
                await self._release(store_key, token)
            raise
        lease.stop()
        if not state["settled"]:  # not replayable, streamed, or the app never finished it
            await self._release(store_key, token)

    async def _complete(
        self,
        store_key: str,
        token: str,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: list[bytes],
    ) -> None:
        stored = {
            "s": status,
            "h": [
                [n.decode("latin-1"), v.decode("latin-1")]
                for n, v in headers
                if n.lower() != b"date"
            ],
            "b": base64.b64encode(b"".join(body)).decode(),
        }
        try:
            await self._store.acomplete(
                store_key, token, _core.encode_result(_SERIALIZER, stored), self.ttl
            )
        except Exception:  # the response still goes out; the key stays until its lease ends
            _log.exception("could not store the response for idempotency key %r", store_key)

    async def _release(self, store_key: str, token: str) -> None:
        try:
            await self._store.arelease(store_key, token)
        except Exception:
            _log.exception("could not release idempotency key %r", store_key)


def _parse_key(raw: bytes) -> str | None:
    """The key from the header: an sf-string (``"abc"``) or, leniently, a bare token."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    return text if _KEY_RE.fullmatch(text) else None


async def _problem(
    send: Send,
    status: int,
    title: str,
    detail: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail}
    ).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
