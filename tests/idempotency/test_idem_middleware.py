"""IdempotencyMiddleware over real HTTP: uvicorn on loopback, httpx as the client."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from resilience import ConfigurationError
from resilience.idempotency import IdempotencyMiddleware, MemoryStore, RedisStore
from resilience.idempotency._store import as_async_store
from resilience.testing import free_port

pytestmark = pytest.mark.integration  # uvicorn on loopback


class Server:
    def __init__(self, store: Any, **options: Any) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response, StreamingResponse
        from starlette.routing import Route

        self.calls: dict[str, int] = {}
        self.gate = threading.Event()

        def count(name: str) -> int:
            self.calls[name] = self.calls.get(name, 0) + 1
            return self.calls[name]

        async def charge(request: Request) -> Response:
            body = await request.json()
            n = count("charge")
            return JSONResponse(
                {"n": n, "amount": body["amount"]}, status_code=201, headers={"x-charge": f"ch_{n}"}
            )

        async def slow(request: Request) -> Response:
            count("slow")
            await asyncio.to_thread(self.gate.wait, 10)  # a thread gate, set by the test
            return JSONResponse({"slow": True})

        async def fail(request: Request) -> Response:
            return JSONResponse({"n": count("fail")}, status_code=503)

        async def declined(request: Request) -> Response:
            return JSONResponse({"n": count("declined"), "error": "card_declined"}, status_code=402)

        async def stream(request: Request) -> Response:
            count("stream")

            async def chunks() -> Any:
                yield b"a"
                yield b"b"

            return StreamingResponse(chunks())

        async def read(request: Request) -> Response:
            return JSONResponse({"n": count("read")})

        class Parts:
            """A raw ASGI endpoint: a sized response sent in three chunks."""

            async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
                n = count("parts")
                chunks = [b'{"part":', str(n).encode(), b"}"]
                length = str(sum(map(len, chunks))).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", length)]
                await send({"type": "http.response.start", "status": 201, "headers": headers})
                for i, chunk in enumerate(chunks):
                    more = i < len(chunks) - 1
                    await send({"type": "http.response.body", "body": chunk, "more_body": more})

        app = Starlette(
            routes=[
                Route("/charge", charge, methods=["POST", "GET"]),
                Route("/slow", slow, methods=["POST"]),
                Route("/fail", fail, methods=["POST"]),
                Route("/declined", declined, methods=["POST"]),
                Route("/stream", stream, methods=["POST"]),
                Route("/other", read, methods=["POST"]),
                Route("/parts", Parts(), methods=["POST"]),
            ]
        )
        self.port = free_port()
        protected = IdempotencyMiddleware(app, store=store, **options)

        async def outer(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "lifespan":
                await protected(scope, receive, send)
                return
            while True:  # close the async Redis client on the server's own loop
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    client = getattr(store, "_aclient", None)
                    if client is not None:
                        await client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

        config = uvicorn.Config(
            outer, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(params=["memory", "redis"])
def http_store(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryStore()
        return
    import redis.asyncio

    request.getfixturevalue("redis_client")  # ensures the server is up
    client = redis.asyncio.Redis.from_url(request.getfixturevalue("redis_url"))
    yield RedisStore(async_client=client, prefix=request.getfixturevalue("redis_prefix"))


class SlowCompletion:
    """A real store whose completion takes a while: a wide window after the app answered."""

    def __init__(self, store: Any, delay: float) -> None:
        self.store = as_async_store(store)
        self.delay = delay

    async def aclaim(self, key: str, fp: str, token: str, lease_ttl: float, ttl: float) -> Any:
        return await self.store.aclaim(key, fp, token, lease_ttl, ttl)

    async def acomplete(self, key: str, token: str, payload: str, ttl: float) -> None:
        await asyncio.sleep(self.delay)
        await self.store.acomplete(key, token, payload, ttl)

    async def arelease(self, key: str, token: str) -> None:
        await self.store.arelease(key, token)

    async def arenew(self, key: str, token: str, lease_ttl: float) -> None:
        await self.store.arenew(key, token, lease_ttl)

    async def acheckpoint(self, key: str, token: str, name: str, data: str) -> None:
        await self.store.acheckpoint(key, token, name, data)

    @property
    def _aclient(self) -> Any:  # the test server closes the async Redis client at shutdown
        return getattr(self.store, "_aclient", None)


@pytest.fixture(params=["redis", "sqlite"])
def slow_store(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "sqlite":
        make = request.getfixturevalue("make_sql_store")
        yield SlowCompletion(make(request.getfixturevalue("sqlite_url")), 0.3)
        return
    import redis.asyncio

    request.getfixturevalue("redis_client")
    client = redis.asyncio.Redis.from_url(request.getfixturevalue("redis_url"))
    store = RedisStore(async_client=client, prefix=request.getfixturevalue("redis_prefix"))
    yield SlowCompletion(store, 0.3)


@pytest.mark.parametrize("path", ["/charge", "/parts"])
def test_a_retry_sent_as_the_response_arrives_is_replayed(slow_store: Any, path: str) -> None:
    """The response is stored before its last chunk leaves, so no retry can see a 409."""
    server = Server(slow_store)
    with server as http:
        headers = {"Idempotency-Key": "quick"}
        first = http.post(path, json={"amount": 5}, headers=headers)
        again = http.post(path, json={"amount": 5}, headers=headers)  # no pause at all
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert sum(server.calls.values()) == 1


def test_replays_the_first_response(http_store: Any) -> None:
    server = Server(http_store)
    with server as http:
        first = http.post("/charge", json={"amount": 10}, headers={"Idempotency-Key": "k1"})
        again = http.post("/charge", json={"amount": 10}, headers={"Idempotency-Key": "k1"})
        assert first.status_code == again.status_code == 201
        assert first.json() == again.json() == {"n": 1, "amount": 10}
        assert again.headers["x-charge"] == "ch_1"
        assert again.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        assert server.calls["charge"] == 1
        sf = http.post("/charge", json={"amount": 10}, headers={"Idempotency-Key": '"k1"'})
        assert sf.headers["idempotent-replayed"] == "true"  # the sf-string form is the same key


def test_key_reused_with_another_request_is_422(http_store: Any) -> None:
    server = Server(http_store)
    with server as http:
        http.post("/charge", json={"amount": 10}, headers={"Idempotency-Key": "k"})
        for method, path, body in [
            ("POST", "/charge", {"amount": 11}),
            ("POST", "/other", {"amount": 10}),
        ]:
            r = http.request(method, path, json=body, headers={"Idempotency-Key": "k"})
            assert r.status_code == 422
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["status"] == 422
        assert server.calls == {"charge": 1}


def test_in_flight_duplicate_is_409_with_retry_after(http_store: Any) -> None:
    server = Server(http_store, in_progress_ttl=30)
    with server as http:
        result: list[httpx.Response] = []
        worker = threading.Thread(
            target=lambda: result.append(
                http.post("/slow", json={}, headers={"Idempotency-Key": "s"})
            )
        )
        worker.start()
        deadline = time.monotonic() + 10
        while not server.calls.get("slow"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        dup = http.post("/slow", json={}, headers={"Idempotency-Key": "s"})
        assert dup.status_code == 409
        assert 1 <= int(dup.headers["retry-after"]) <= 30
        assert dup.headers["content-type"] == "application/problem+json"
        server.gate.set()
        worker.join(10)
        assert result[0].status_code == 200
        assert (
            http.post("/slow", json={}, headers={"Idempotency-Key": "s"}).headers[
                "idempotent-replayed"
            ]
            == "true"
        )
        assert server.calls["slow"] == 1


def test_invalid_and_missing_keys(http_store: Any) -> None:
    server = Server(http_store, required=True, routes=[r"/charge", r"/fail"])
    with server as http:
        missing = http.post("/charge", json={"amount": 1})
        assert missing.status_code == 400
        assert missing.headers["content-type"] == "application/problem+json"
        for bad in ["x" * 256, "tab\there", ""]:
            r = http.post("/charge", json={"amount": 1}, headers={"Idempotency-Key": bad})
            assert r.status_code == 400, bad
        r = http.post("/charge", json={"amount": 1}, headers={"Idempotency-Key": "x" * 255})
        assert r.status_code == 201
        assert http.post("/other", json={}).status_code == 200  # route not protected
        assert server.calls.get("charge") == 1


def test_5xx_releases_4xx_is_replayed_streaming_is_passed_through(http_store: Any) -> None:
    server = Server(http_store)
    with server as http:
        h = {"Idempotency-Key": "e"}
        assert http.post("/fail", json={}, headers=h).status_code == 503
        assert http.post("/fail", json={}, headers=h).status_code == 503
        assert server.calls["fail"] == 2  # 5xx released the key, so the retry ran
        h = {"Idempotency-Key": "d"}
        first, again = (http.post("/declined", json={}, headers=h) for _ in range(2))
        assert first.status_code == again.status_code == 402
        assert again.headers["idempotent-replayed"] == "true"
        assert server.calls["declined"] == 1
        h = {"Idempotency-Key": "st"}
        r1 = http.post("/stream", json={}, headers=h)
        r2 = http.post("/stream", json={}, headers=h)
        assert r1.content == r2.content == b"ab"
        assert "not stored" in r1.headers["idempotency-warning"]
        assert "idempotent-replayed" not in r2.headers
        assert server.calls["stream"] == 2


def test_keys_are_scoped_per_principal(http_store: Any) -> None:
    server = Server(http_store)
    with server as http:
        alice = {"Idempotency-Key": "same", "Authorization": "Bearer alice"}
        bob = {"Idempotency-Key": "same", "Authorization": "Bearer bob"}
        a = http.post("/charge", json={"amount": 5}, headers=alice)
        b = http.post("/charge", json={"amount": 5}, headers=bob)
        assert a.json()["n"] == 1
        assert b.json()["n"] == 2  # bob's request ran: he cannot replay alice's response
        assert "idempotent-replayed" not in b.headers
        assert http.post("/charge", json={"amount": 5}, headers=alice).json()["n"] == 1


def test_bad_configuration() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    with pytest.raises(ConfigurationError):
        IdempotencyMiddleware(app, store=MemoryStore(), methods="POST")
    with pytest.raises(ConfigurationError):
        IdempotencyMiddleware(app, store=MemoryStore(), routes=["("])
    with pytest.raises(ConfigurationError):
        IdempotencyMiddleware(app, store=object())  # type: ignore[arg-type]


async def test_corrupted_stored_response_is_a_500_problem_not_a_rerun() -> None:
    from resilience.idempotency._core import scoped_key

    store = MemoryStore()
    calls: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(1)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    mw = IdempotencyMiddleware(app, store=store)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "headers": [(b"idempotency-key", b"c")],
    }
    await mw(scope, receive, send)
    store._records[scoped_key("http", "anonymous", "c")].payload = "r{garbage"
    sent.clear()
    await mw(scope, receive, send)
    assert sent[0]["status"] == 500
    assert calls == [1]


async def test_middleware_over_a_blocking_sql_store(sqlite_url: str, make_sql_store: Any) -> None:
    store = make_sql_store(sqlite_url)
    calls: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(1)
        await send(
            {"type": "http.response.start", "status": 201, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    transport = httpx.ASGITransport(app=IdempotencyMiddleware(app, store=store))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        first = await client.post("/x", content=b"1", headers={"Idempotency-Key": "a"})
        again = await client.post("/x", content=b"1", headers={"Idempotency-Key": "a"})
        other = await client.post("/x", content=b"2", headers={"Idempotency-Key": "a"})
    assert (first.status_code, again.status_code, other.status_code) == (201, 201, 422)
    assert again.headers["idempotent-replayed"] == "true"
    assert calls == [1]


async def test_oversized_request_bodies_are_refused_with_413() -> None:
    calls: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(1)

    transport = httpx.ASGITransport(
        app=IdempotencyMiddleware(app, store=MemoryStore(), max_request_bytes=10)
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.post("/x", content=b"x" * 11, headers={"Idempotency-Key": "a"})
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    assert calls == []


async def test_streaming_response_is_not_cut_short_by_a_fake_disconnect() -> None:
    """Starlette streams while listening for disconnects (ASGI spec < 2.4): after the
    buffered body, the middleware must hand over to the server's receive, not invent one."""
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    async def stream(request: Any) -> StreamingResponse:
        await request.body()

        async def chunks() -> Any:
            for part in (b"a", b"b", b"c"):
                await asyncio.sleep(0.01)
                yield part

        return StreamingResponse(chunks())

    app = Starlette(routes=[Route("/s", stream, methods=["POST"])])
    transport = httpx.ASGITransport(app=IdempotencyMiddleware(app, store=MemoryStore()))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.post("/s", content=b"1", headers={"Idempotency-Key": "a"})
    assert r.content == b"abc"
    assert "not stored" in r.headers["idempotency-warning"]
