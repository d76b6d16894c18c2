"""A small, real OTLP/HTTP trace receiver for the tracing-on benchmark: it decodes and counts.

It accepts ``POST /v1/traces`` (protobuf, optionally gzip), decodes every request with
opentelemetry-proto as a collector would, and counts spans per service and per service and
span name; ``GET /count`` answers the counts as JSON. It runs as its own process so that decoding does not share the
harness's event loop.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_spans: Counter[str] = Counter()
_names: Counter[str] = Counter()


async def _traces(request: web.Request) -> web.Response:
    body = await request.read()
    if request.headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    message = ExportTraceServiceRequest.FromString(body)
    for resource_spans in message.resource_spans:
        service = next(
            (
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            ),
            "unknown",
        )
        for scope_spans in resource_spans.scope_spans:
            _spans[service] += len(scope_spans.spans)
            for span in scope_spans.spans:
                _names[f"{service}: {span.name}"] += 1
    return web.Response(
        body=ExportTraceServiceResponse().SerializeToString(),
        content_type="application/x-protobuf",
    )


async def _count(_request: web.Request) -> web.Response:
    return web.Response(
        text=json.dumps(
            {"spans": dict(_spans), "by_name": dict(_names), "total": sum(_spans.values())}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", _traces)
    app.router.add_get("/count", _count)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
