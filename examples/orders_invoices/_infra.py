"""Plumbing shared by the services: SQLite engines, RFC 9457 problems, threads, uvicorn.

Nothing here is business logic. Each service owns its own database file, its
own FastAPI app served by its own uvicorn server on a loopback port, and its own
background threads (outbox relay, consumers); this module gives them the
common way to start and stop those pieces.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from resilience.tracing import TraceContextMiddleware, httpx_event_hooks

PROBLEM_JSON = "application/problem+json"

UNPROTECTED_TIMEOUT = 30.0
"""What a call waits when the policies are switched off: a client nobody configured."""


def sqlite_engine(path: Path) -> sa.Engine:
    """A SQLite engine safe for several threads writing the same file.

    WAL lets readers run beside the writer; ``BEGIN IMMEDIATE`` takes the write
    lock when a transaction starts, so two transactions never both read and
    then fail to upgrade (SQLite answers that with an immediate "database is
    locked" instead of waiting).
    """
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def problem(status: int, title: str, detail: str = "", **extra: Any) -> JSONResponse:
    """An RFC 9457 problem response."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


class ProblemError(Exception):
    """Raised by a handler to answer with a problem body."""

    def __init__(self, status: int, title: str, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra


def service_app(name: str) -> FastAPI:
    """A FastAPI app whose every error is an RFC 9457 problem body."""
    app = FastAPI(title=name, openapi_url=None, docs_url=None, redoc_url=None)
    app.add_middleware(TraceContextMiddleware)  # continue the caller's trace (no-op without OTel)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        return problem(
            422, "Invalid request", "The request body or parameters are invalid.", errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail))

    @app.exception_handler(ProblemError)
    async def _problem(_request: Request, exc: ProblemError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, **exc.extra)

    @app.get("/health")
    def _health() -> dict[str, str | int]:
        return {"status": "ok", "service": name, "pid": os.getpid()}

    return app


def http_client(base_url: str = "", timeout: float = 2.0) -> httpx.Client:
    """An httpx client that sends the current trace context (``traceparent``) with each request."""
    return httpx.Client(base_url=base_url, timeout=timeout, event_hooks=httpx_event_hooks())


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HttpServer:
    """A uvicorn server on a loopback port, in a daemon thread; stop and start it again.

    The port is kept across restarts, so clients configured with the URL see
    "connection refused" while the server is down and reach it again after.
    *threads* caps the worker threads that run the app's blocking handlers
    (anyio's default is 40), as a server's worker pool would.
    """

    def __init__(self, app: Any, name: str, port: int = 0, *, threads: int | None = None) -> None:
        self.app = app
        self.name = name
        self.port = port
        self.threads = threads
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=asyncio.run,
            args=(self._serve(server, sock),),
            name=f"http-{self.name}",
            daemon=True,
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: HTTP server did not start")
            time.sleep(0.01)
        self._server, self._thread = server, thread

    async def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        if self.threads is not None:
            anyio.to_thread.current_default_thread_limiter().total_tokens = self.threads
        await server.serve(sockets=[sock])

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(10)


class Worker:
    """A background loop ``target(stop_event)`` in a daemon thread that can be stopped and restarted."""

    def __init__(self, name: str, target: Callable[[threading.Event], None]) -> None:
        self.name = name
        self._target = target
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._target, args=(self._stop,), name=self.name, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(10)


def every(seconds: float, fn: Callable[[], object]) -> Callable[[threading.Event], None]:
    """A worker target calling *fn* every *seconds* until stopped."""

    def loop(stop: threading.Event) -> None:
        while not stop.wait(seconds):
            fn()

    return loop
