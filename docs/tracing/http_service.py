"""HTTP in and out: the middleware continues the caller's trace, the httpx hook passes it on.

Two Starlette services talk through httpx (in process here, over the network
in production). Run it: ``python docs/tracing/http_service.py``.
"""

import asyncio

import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from resilience.tracing import TraceContextMiddleware, format_trace, httpx_event_hooks

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)


async def charge(request: Request) -> JSONResponse:
    return JSONResponse({"order": request.path_params["order_id"], "status": "captured"})


payments = Starlette(routes=[Route("/charges/{order_id}", charge, methods=["POST"])])
payments.add_middleware(TraceContextMiddleware)

payments_client = httpx.AsyncClient(
    transport=httpx.ASGITransport(app=payments),  # a real base_url in production
    base_url="http://payments",
    event_hooks=httpx_event_hooks(asynchronous=True),  # adds traceparent to every request
)


async def checkout_endpoint(request: Request) -> JSONResponse:
    response = await payments_client.post(f"/charges/{request.path_params['order_id']}")
    return JSONResponse(response.json())


checkout = Starlette(routes=[Route("/checkout/{order_id}", checkout_endpoint, methods=["POST"])])
checkout.add_middleware(TraceContextMiddleware)


async def main() -> None:
    transport = httpx.ASGITransport(app=checkout)
    async with httpx.AsyncClient(transport=transport, base_url="http://checkout") as client:
        response = await client.post("/checkout/o-1")
    print(response.json())
    await payments_client.aclose()


asyncio.run(main())
print(format_trace(exporter.get_finished_spans(), attributes=["http.route"], timings=False))
assert len({s.context.trace_id for s in exporter.get_finished_spans()}) == 1
