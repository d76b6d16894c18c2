"""The bench's OTLP receiver (bench/otlp.py) counts what the SDK's own OTLP/HTTP exporter sends:
spans per service, and per service and span name (the bench's spans-per-CR breakdown)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from bench.harness import REPO
from deploy.local.layout import free_port

pytestmark = pytest.mark.integration


def _count(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=5) as resp:
        return dict(json.loads(resp.read()))


def test_the_receiver_counts_spans_by_service_and_name() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.otlp", "--port", str(port)], cwd=REPO)
    try:
        for _ in range(100):
            try:
                _count(port)
                break
            except OSError:
                time.sleep(0.1)
        provider = TracerProvider(resource=Resource.create({"service.name": "watcher"}))
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        for _ in range(3):
            with tracer.start_as_current_span("send mcop.events.pod"):
                pass
        with tracer.start_as_current_span("send mcop.requests.status"):
            pass
        provider.shutdown()
        counts = _count(port)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert counts["total"] == 4
    assert counts["spans"] == {"watcher": 4}
    assert counts["by_name"] == {
        "watcher: send mcop.events.pod": 3,
        "watcher: send mcop.requests.status": 1,
    }
