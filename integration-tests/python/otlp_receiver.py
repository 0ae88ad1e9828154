"""A real OTLP/HTTP traces receiver inside the test process, standing in for Jaeger.

:class:`OtlpReceiver` serves ``POST /v1/traces`` on 127.0.0.1 (a port of its own) from a
thread, decodes each ``ExportTraceServiceRequest`` with ``opentelemetry-proto`` (protobuf,
or OTLP/JSON; gzip bodies too) and answers 200 with an empty
``ExportTraceServiceResponse``. Point a process at it with
``OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint`` (see :meth:`OtlpReceiver.env`).

It keeps every span it was sent as a :class:`Span` and answers questions about them: the
spans of a trace, the traces holding a span that matches a predicate, the children of a
span, and :meth:`OtlpReceiver.assert_one_tree` (one root, no orphan, no span id twice),
whose failure message is a dump of the trace as a tree. :meth:`OtlpReceiver.wait_until`
waits for a condition over what has arrived with the harness's ``wait_until`` (its timeout
scales with ``DROVER_TEST_PATIENCE``).
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
import zlib
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Mapping, Optional

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus

from drover_harness import patient, wait_for, wait_until

TRACES_PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

#: Attributes shown beside each span in a tree dump.
DUMP_ATTRIBUTES = (
    "drover.run_id",
    "drover.attempt",
    "drover.worker_id",
    "drover.status",
    "drover.outcome",
    "drover.reason",
    "drover.failure_reason",
)


@dataclass(frozen=True)
class Event:
    """A span event: a log line, or a moment such as ``assigned``."""

    name: str
    time_ns: int
    attributes: Mapping[str, Any]

    def text(self) -> str:
        """The name and every attribute value, for matching a log line by its words."""
        return " ".join([self.name, *(str(value) for value in self.attributes.values())])


@dataclass(frozen=True)
class Span:
    """One span as it arrived, ids in lowercase hex."""

    trace_id: str
    span_id: str
    parent_span_id: Optional[str]
    name: str
    kind: str  # "internal", "server", "client", "producer", "consumer" or "unspecified"
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    events: tuple[Event, ...]
    status: str  # "unset", "ok" or "error"
    status_message: str
    service: Optional[str]  # the resource's service.name
    scope: str  # the instrumentation scope's name
    received: int = field(default=0, compare=False)  # arrival order across all spans

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attributes.get(key, default)

    def has_event(self, text: str) -> bool:
        """Whether an event's name or one of its attribute values contains ``text``."""
        return any(text in event.text() for event in self.events)

    def describe(self) -> str:
        """One line: name, service, id, status and the Drover attributes."""
        shown = " ".join(f"{key.removeprefix('drover.')}={self.attributes[key]}" for key in DUMP_ATTRIBUTES if key in self.attributes)
        status = ""
        if self.status != "unset":  # upper case, apart from the drover.status attribute
            status = f" {self.status.upper()}" + (f"({self.status_message})" if self.status_message else "")
        events = f" events={[event.name for event in self.events]}" if self.events else ""
        return (
            f"{self.name} [{self.service or '?'}] span={self.span_id} {self.kind} "
            f"{self.duration_ms:.1f}ms{status}{(' ' + shown) if shown else ''}{events}"
        )


class OtlpReceiver:
    """An OTLP/HTTP traces receiver on 127.0.0.1. Use as a context manager, or ``start()``/``close()``."""

    def __init__(self, port: int = 0) -> None:
        self._wanted_port = port
        self._lock = threading.Lock()
        self._spans: list[Span] = []
        self._requests = 0
        self._bytes = 0
        self._last_request_at = time.monotonic()
        self._errors: list[str] = []
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "OtlpReceiver":
        """Listens on 127.0.0.1 (the port given, or a free one) and serves from a daemon thread."""
        receiver = self

        class Handler(_Handler):
            owner = receiver

        self._server = ThreadingHTTPServer(("127.0.0.1", self._wanted_port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="otlp-receiver", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stops serving. Idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "OtlpReceiver":
        return self.start() if self._server is None else self

    def __exit__(self, *_: Any) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._server is not None, "the receiver is not started"
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        """The base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (exporters add ``/v1/traces``)."""
        return f"http://127.0.0.1:{self.port}"

    def env(self, batch_delay_ms: int = 100) -> dict[str, str]:
        """Environment for a process that should export here, over protobuf, soon after each span."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": str(batch_delay_ms),
        }

    # ------------------------------------------------------------------ what arrived

    @property
    def requests(self) -> int:
        """Export requests received (including empty and refused ones)."""
        with self._lock:
            return self._requests

    @property
    def bytes_received(self) -> int:
        """Request body bytes received, as sent (before any decompression)."""
        with self._lock:
            return self._bytes

    @property
    def errors(self) -> list[str]:
        """Requests that could not be decoded, one line each."""
        with self._lock:
            return list(self._errors)

    def spans(self, trace_id: Optional[str] = None) -> list[Span]:
        """Every span received (of one trace if given), in arrival order."""
        with self._lock:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]

    def find(self, predicate: Callable[[Span], bool], trace_id: Optional[str] = None) -> list[Span]:
        """The spans (of one trace if given) that match ``predicate``."""
        return [s for s in self.spans(trace_id) if predicate(s)]

    def trace_ids(self) -> list[str]:
        """Every trace id seen, in order of first arrival."""
        return list(dict.fromkeys(s.trace_id for s in self.spans()))

    def traces_with(self, predicate: Callable[[Span], bool]) -> list[str]:
        """The traces that hold at least one span matching ``predicate``, in order of first arrival."""
        return list(dict.fromkeys(s.trace_id for s in self.spans() if predicate(s)))

    def roots(self, trace_id: Optional[str] = None) -> list[Span]:
        """Spans without a parent (of one trace if given)."""
        return [s for s in self.spans(trace_id) if s.parent_span_id is None]

    def span(self, trace_id: str, span_id: str) -> Optional[Span]:
        """The span with this id in this trace, if it arrived."""
        for s in self.spans(trace_id):
            if s.span_id == span_id:
                return s
        return None

    def parent(self, span: Span) -> Optional[Span]:
        """The span's parent, if it has one and it arrived."""
        return None if span.parent_span_id is None else self.span(span.trace_id, span.parent_span_id)

    def children(self, span: Span, name: Optional[str] = None) -> list[Span]:
        """The span's direct children (named ``name`` if given), by start time."""
        found = [
            s for s in self.spans(span.trace_id) if s.parent_span_id == span.span_id and (name is None or s.name == name)
        ]
        return sorted(found, key=lambda s: (s.start_ns, s.received))

    def ancestors(self, span: Span) -> list[Span]:
        """The chain of parents that arrived, nearest first."""
        chain: list[Span] = []
        current = self.parent(span)
        while current is not None and current not in chain:
            chain.append(current)
            current = self.parent(current)
        return chain

    def clear(self) -> None:
        """Forgets every span and count."""
        with self._lock:
            self._spans.clear()
            self._requests = 0
            self._bytes = 0
            self._errors.clear()

    # ------------------------------------------------------------------ waiting

    async def wait_until(self, what: str, predicate: Callable[["OtlpReceiver"], bool], timeout: float = 10.0) -> None:
        """Waits until ``predicate(receiver)`` holds; on timeout the message ends with what arrived."""
        try:
            await wait_until(what, lambda: predicate(self), timeout)
        except TimeoutError as error:
            raise TimeoutError(f"{error}\n{self.summary()}") from None

    async def wait_for(self, what: str, probe: Callable[["OtlpReceiver"], Any], timeout: float = 10.0) -> Any:
        """Waits until ``probe(receiver)`` returns something other than ``None``/``False``; that value."""
        try:
            return await wait_for(what, lambda: probe(self), timeout)
        except TimeoutError as error:
            raise TimeoutError(f"{error}\n{self.summary()}") from None

    async def wait_quiet(self, quiet: float = 0.5, timeout: float = 10.0) -> None:
        """Waits until no export request has arrived for ``quiet`` seconds (scaled by patience):
        every exporter with spans pending has flushed its batch by then."""

        def silent() -> bool:
            with self._lock:
                since = time.monotonic() - self._last_request_at
            return since >= patient(quiet)

        await self.wait_until(f"no export request for {quiet}s", lambda _: silent(), timeout)

    # ------------------------------------------------------------------ the tree

    def tree(self, trace_id: str) -> str:
        """The trace as an indented tree, then its orphans (spans whose parent did not arrive)."""
        spans = self.spans(trace_id)
        ids = {s.span_id for s in spans}
        by_parent: dict[Optional[str], list[Span]] = {}
        for s in spans:
            by_parent.setdefault(s.parent_span_id, []).append(s)
        for group in by_parent.values():
            group.sort(key=lambda s: (s.start_ns, s.received))
        lines = [f"trace {trace_id}: {len(spans)} spans"]
        shown: set[int] = set()

        def walk(span: Span, depth: int) -> None:
            if id(span) in shown:
                lines.append("  " * depth + f"(cycle at {span.span_id})")
                return
            shown.add(id(span))
            lines.append("  " * depth + span.describe())
            for child in by_parent.get(span.span_id, []):
                walk(child, depth + 1)

        for root in by_parent.get(None, []):
            walk(root, 1)
        orphans = [s for s in spans if s.parent_span_id is not None and s.parent_span_id not in ids]
        if orphans:
            lines.append("  orphans (their parent is not in the trace):")
            for orphan in orphans:
                lines.append(f"    parent {orphan.parent_span_id} missing:")
                walk(orphan, 3)
        return "\n".join(lines)

    def assert_one_tree(self, trace_id: str) -> Span:
        """Asserts that the trace has exactly one root, no orphan and no span id twice; its root."""
        spans = self.spans(trace_id)
        assert spans, f"no span of trace {trace_id} arrived\n{self.summary()}"
        ids = [s.span_id for s in spans]
        roots = [s for s in spans if s.parent_span_id is None]
        orphans = [s for s in spans if s.parent_span_id is not None and s.parent_span_id not in ids]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        problems = []
        if len(roots) != 1:
            problems.append(f"{len(roots)} roots ({', '.join(r.name for r in roots)})")
        if orphans:
            problems.append(f"{len(orphans)} orphans ({', '.join(o.name for o in orphans)})")
        if twice:
            problems.append(f"span ids sent more than once: {', '.join(twice)}")
        assert not problems, f"trace {trace_id} is not one tree: {'; '.join(problems)}\n{self.tree(trace_id)}"
        return roots[0]

    def summary(self) -> str:
        """Every trace, one line each (root, span count and names), for failure messages."""
        lines = [f"receiver: {self.requests} requests, {len(self.spans())} spans"]
        lone: dict[str, int] = {}  # one-span traces, counted by name and service
        for trace_id in self.trace_ids():
            spans = self.spans(trace_id)
            if len(spans) == 1 and spans[0].parent_span_id is None:
                key = f"{spans[0].name} [{spans[0].service or '?'}]"
                lone[key] = lone.get(key, 0) + 1
                continue
            roots = [s.name for s in spans if s.parent_span_id is None]
            names = sorted({s.name for s in spans})
            lines.append(f"  {trace_id}: {len(spans)} spans, roots {roots}, names {names}")
        for key, count in sorted(lone.items()):
            lines.append(f"  {count} traces of a single span {key}")
        errors = self.errors
        if errors:
            lines.append(f"  undecodable requests: {errors}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ intake

    def take(self, body: bytes, content_type: str = PROTOBUF) -> None:
        """Takes one export request as if it had been posted here: for requests kept
        elsewhere, such as by the sink that stands in for Jaeger in the container tests."""
        self._count(len(body))
        self._take(body, content_type.split(";")[0].strip())

    def _take(self, body: bytes, content_type: str) -> None:
        request = ExportTraceServiceRequest()
        if content_type == JSON:
            request = json_format.ParseDict(_hex_ids_to_base64(json.loads(body)), request)
        else:
            request.ParseFromString(body)
        spans = list(_spans_of(request))
        with self._lock:
            start = len(self._spans)
            self._spans.extend(replace(s, received=start + index) for index, s in enumerate(spans))

    def _count(self, size: int) -> None:
        with self._lock:
            self._requests += 1
            self._bytes += size
            self._last_request_at = time.monotonic()

    def _refused(self, why: str) -> None:
        with self._lock:
            self._errors.append(why)


class _Handler(BaseHTTPRequestHandler):
    owner: OtlpReceiver
    protocol_version = "HTTP/1.1"  # keep-alive, as exporters expect

    def do_POST(self) -> None:  # noqa: N802 - the http.server name
        try:
            body = self._body()
        except (ValueError, OSError) as error:
            self.owner._refused(f"unreadable body: {error!r}")
            self._answer(400, b"", "text/plain")
            return
        self.owner._count(len(body))
        if self.path.split("?", 1)[0] != TRACES_PATH:
            self._answer(404, b"", "text/plain")
            return
        content_type = (self.headers.get("Content-Type") or PROTOBUF).split(";", 1)[0].strip().lower()
        try:
            self.owner._take(_decompress(body, self.headers.get("Content-Encoding")), content_type)
        except Exception as error:  # a request we cannot read is an error of the exporter
            self.owner._refused(f"{content_type}: {error!r}")
            self._answer(400, b"", "text/plain")
            return
        if content_type == JSON:
            self._answer(200, b"{}", JSON)
        else:
            self._answer(200, ExportTraceServiceResponse().SerializeToString(), PROTOBUF)

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server name
        pass  # quiet: the test's output is for the test


def _decompress(body: bytes, encoding: Optional[str]) -> bytes:
    encoding = (encoding or "").strip().lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _hex_ids_to_base64(value: Any) -> Any:
    """OTLP/JSON writes ids in hex where protobuf's JSON mapping expects base64."""
    if isinstance(value, list):
        return [_hex_ids_to_base64(item) for item in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in _ID_FIELDS and isinstance(item, str):
                out[key] = base64.b64encode(bytes.fromhex(item)).decode()
            else:
                out[key] = _hex_ids_to_base64(item)
        return out
    return value


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, which)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _span_id(raw: bytes) -> Optional[str]:
    return raw.hex() if raw and any(raw) else None


def _spans_of(request: ExportTraceServiceRequest) -> Iterable[Span]:
    for resource_spans in request.resource_spans:
        service = _attributes(resource_spans.resource.attributes).get("service.name")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield Span(
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=_span_id(span.parent_span_id),
                    name=span.name,
                    kind=ProtoSpan.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_").lower(),
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    attributes=_attributes(span.attributes),
                    events=tuple(
                        Event(event.name, event.time_unix_nano, _attributes(event.attributes)) for event in span.events
                    ),
                    status=ProtoStatus.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_").lower(),
                    status_message=span.status.message,
                    service=service,
                    scope=scope_spans.scope.name,
                )
