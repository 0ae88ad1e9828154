"""The test suite's OTLP/HTTP receiver (otlp_receiver.py) on its own: no Drover service.

Requests are built with ``opentelemetry-proto`` and posted over HTTP, and the Python
OpenTelemetry SDK's own OTLP/HTTP exporter is pointed at it, as a traced process would be.
"""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
from typing import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from otlp_receiver import OtlpReceiver

TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
ROOT, CHILD, GRANDCHILD = (bytes.fromhex(h) for h in ("b7ad6b7169203331", "00f067aa0ba902b7", "53995c3f42cd8ad8"))


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def kv(key: str, value: object) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, list):
        return KeyValue(key=key, value=AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=v) for v in value])))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def span(span_id: bytes, name: str, parent: bytes = b"", attributes: dict[str, object] | None = None) -> Span:
    return Span(
        trace_id=TRACE,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=1_000_000_000,
        end_time_unix_nano=1_250_000_000,
        attributes=[kv(k, v) for k, v in (attributes or {}).items()],
    )


def request(*spans: Span, service: str = "drover-scheduler") -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[kv("service.name", service)]),
                scope_spans=[ScopeSpans(spans=list(spans))],
            )
        ]
    )


def post(receiver: OtlpReceiver, body: bytes, content_type: str = "application/x-protobuf", **headers: str) -> tuple[int, bytes]:
    req = urllib.request.Request(
        receiver.endpoint + "/v1/traces", data=body, method="POST", headers={"Content-Type": content_type, **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_a_protobuf_request_is_kept_span_by_span(receiver: OtlpReceiver):
    root = span(ROOT, "drover.run", attributes={"drover.run_id": "r-1", "drover.attempts": 2})
    root.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="failed"))
    child = span(CHILD, "drover.attempt", ROOT, {"drover.attempt": 1, "tags": ["a", "b"]})
    child.events.add(name="assigned", time_unix_nano=1_100_000_000, attributes=[kv("worker", "w-1")])
    status, body = post(receiver, request(root, child).SerializeToString())

    assert status == 200
    reply = ExportTraceServiceResponse()
    reply.ParseFromString(body)
    assert reply == ExportTraceServiceResponse()
    assert receiver.requests == 1 and receiver.errors == []
    [got_root, got_child] = receiver.spans(TRACE.hex())
    assert got_root.name == "drover.run" and got_root.parent_span_id is None
    assert got_root.attributes == {"drover.run_id": "r-1", "drover.attempts": 2}
    assert (got_root.status, got_root.status_message) == ("error", "failed")
    assert got_root.service == "drover-scheduler" and got_root.kind == "server"
    assert got_root.duration_ms == 250.0
    assert got_child.parent_span_id == ROOT.hex() and got_child.span_id == CHILD.hex()
    assert got_child.attributes["tags"] == ["a", "b"]
    assert [(e.name, dict(e.attributes)) for e in got_child.events] == [("assigned", {"worker": "w-1"})]
    assert got_child.has_event("w-1") and not got_child.has_event("w-2")
    assert receiver.children(got_root) == [got_child]
    assert receiver.ancestors(got_child) == [got_root]
    assert receiver.traces_with(lambda s: s.name == "drover.attempt") == [TRACE.hex()]
    assert receiver.traces_with(lambda s: s.name == "drover.submit") == []
    assert receiver.assert_one_tree(TRACE.hex()) == got_root


def test_gzip_and_json_bodies_are_read(receiver: OtlpReceiver):
    compressed = gzip.compress(request(span(ROOT, "drover.submit")).SerializeToString())
    assert post(receiver, compressed, **{"Content-Encoding": "gzip"})[0] == 200
    # OTLP/JSON: ids in hex, enums as numbers.
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "drover-cli"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": TRACE.hex(),
                                "spanId": CHILD.hex(),
                                "parentSpanId": ROOT.hex(),
                                "name": "drover.intake",
                                "kind": 2,
                                "startTimeUnixNano": "1000",
                                "endTimeUnixNano": "2000",
                                "attributes": [{"key": "drover.run_id", "value": {"stringValue": "r-2"}}],
                            }
                        ]
                    }
                ],
            }
        ]
    }
    status, answer = post(receiver, json.dumps(body).encode(), "application/json")
    assert (status, answer) == (200, b"{}")
    [intake] = receiver.find(lambda s: s.name == "drover.intake")
    assert (intake.parent_span_id, intake.service, intake.attr("drover.run_id")) == (ROOT.hex(), "drover-cli", "r-2")
    receiver.assert_one_tree(TRACE.hex())


def test_garbage_is_refused_and_remembered(receiver: OtlpReceiver):
    assert post(receiver, b"\xff\xff not protobuf")[0] == 400
    assert receiver.requests == 1 and receiver.spans() == []
    assert len(receiver.errors) == 1


def test_assert_one_tree_dumps_the_trace_when_it_is_not_one(receiver: OtlpReceiver):
    post(receiver, request(span(ROOT, "drover.submit"), span(CHILD, "drover.run", ROOT, {"drover.run_id": "r-3"})).SerializeToString())
    post(receiver, request(span(GRANDCHILD, "drover.execute", bytes.fromhex("1111111111111111")), service="py-worker").SerializeToString())
    with pytest.raises(AssertionError) as failure:
        receiver.assert_one_tree(TRACE.hex())
    message = str(failure.value)
    assert "1 orphans (drover.execute)" in message
    assert "parent 1111111111111111 missing" in message
    # The tree itself, indented under its root, with the Drover attributes.
    assert "\n  drover.submit [drover-scheduler]" in message
    assert "\n    drover.run [drover-scheduler]" in message and "run_id=r-3" in message

    post(receiver, request(span(bytes.fromhex("2222222222222222"), "drover.intake")).SerializeToString())
    with pytest.raises(AssertionError, match="2 roots"):
        receiver.assert_one_tree(TRACE.hex())


def test_a_span_id_sent_twice_is_not_one_tree(receiver: OtlpReceiver):
    post(receiver, request(span(ROOT, "drover.run")).SerializeToString())
    post(receiver, request(span(ROOT, "drover.run")).SerializeToString())
    with pytest.raises(AssertionError, match="more than once"):
        receiver.assert_one_tree(TRACE.hex())


async def test_waits_see_what_arrives(receiver: OtlpReceiver):
    with pytest.raises(TimeoutError, match="receiver: 0 requests"):
        await receiver.wait_until("a span", lambda r: r.spans(), timeout=0.2)
    post(receiver, request(span(ROOT, "drover.submit")).SerializeToString())
    found = await receiver.wait_for("the submit", lambda r: r.find(lambda s: s.name == "drover.submit"), timeout=2)
    assert [s.span_id for s in found] == [ROOT.hex()]
    await receiver.wait_quiet(0.05, timeout=2)


def test_the_python_sdk_exporter_reaches_it(receiver: OtlpReceiver):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource as SdkResource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import Status as SdkStatus
    from opentelemetry.trace import StatusCode

    provider = TracerProvider(resource=SdkResource.create({"service.name": "receiver-test"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint + "/v1/traces")))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("outer") as outer:
        with tracer.start_as_current_span("inner", attributes={"drover.attempt": 3}) as inner:
            inner.add_event("a log line", {"log.severity": "info"})
            inner.set_status(SdkStatus(StatusCode.ERROR, "boom"))
    provider.shutdown()

    trace_id = format(outer.get_span_context().trace_id, "032x")
    root = receiver.assert_one_tree(trace_id)
    assert root.name == "outer" and root.service == "receiver-test"
    [got] = receiver.children(root)
    assert got.name == "inner" and got.attr("drover.attempt") == 3
    assert got.status == "error" and got.has_event("a log line")
    assert got.span_id == format(inner.get_span_context().span_id, "016x")
