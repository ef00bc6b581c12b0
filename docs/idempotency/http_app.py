"""The Idempotency-Key header on a Starlette (or FastAPI) app."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from resilience.idempotency import IdempotencyMiddleware, MemoryStore

charges: list[int] = []


async def create_charge(request: Request) -> JSONResponse:
    body = await request.json()
    charges.append(body["amount"])
    return JSONResponse({"id": f"ch_{len(charges)}", "amount": body["amount"]}, status_code=201)


app = Starlette(routes=[Route("/charges", create_charge, methods=["POST"])])
app.add_middleware(
    IdempotencyMiddleware,
    store=MemoryStore(),  # RedisStore(async_client=redis.asyncio.Redis()) in production
    methods={"POST", "PATCH"},
    routes=[r"/charges"],
    required=True,
)


async def main() -> None:
    transport = httpx.ASGITransport(app=app)  # or run it with uvicorn
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        headers = {"Idempotency-Key": "8e03978e-40d5", "Authorization": "Bearer alice"}
        first = await client.post("/charges", json={"amount": 4200}, headers=headers)
        again = await client.post("/charges", json={"amount": 4200}, headers=headers)
        assert first.json() == again.json()
        assert again.headers["Idempotent-Replayed"] == "true"
        reused = await client.post("/charges", json={"amount": 1}, headers=headers)
        assert reused.status_code == 422  # same key, different request
        assert (await client.post("/charges", json={"amount": 1})).status_code == 400  # required
        assert charges == [4200]


asyncio.run(main())
