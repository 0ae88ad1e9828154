"""The SDK's hand-written field tables (drover_worker.protocol) against schemas/v1.

The SDK spells every field by hand; schemas/v1 is the source of truth. A field the SDK
sends that the schema does not know would be ignored, or refused, by the services; one it
reads that the schema does not have would never be there.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from drover_worker import protocol
from drover_worker.runs import failure

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas" / "v1"


@cache
def _load(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """Follows ``$ref`` (``file#/$defs/name``, relative to schemas/v1) until an object schema."""
    while "$ref" in schema:
        file, _, pointer = schema["$ref"].partition("#")
        target: Any = _load(file) if file else schema
        for part in pointer.strip("/").split("/") if pointer else []:
            target = target[part]
        schema = target
    return schema


def fields(name: str) -> tuple[set[str], set[str]]:
    """``(properties, required)`` of the object a schema file describes."""
    schema = _resolve(_load(name))
    assert schema.get("type", "object") == "object", name
    return set(schema.get("properties", {})), set(schema.get("required", []))


def schema_file(key: str, *, inbox: bool = False) -> str:
    """``v1.routine.cancel`` -> ``routine.cancel.schema.json``; a message in a worker's inbox
    has its own schema, ``worker.<...>``, where it differs from what a worker sends."""
    stem = key.removeprefix("v1.")
    if inbox and (SCHEMAS / f"worker.{stem}.schema.json").exists():
        return f"worker.{stem}.schema.json"
    return f"{stem}.schema.json"


def enum(name: str) -> set[str]:
    return set(_load("defs.schema.json")["$defs"][name]["enum"])


def test_the_schemas_are_there():
    assert SCHEMAS.is_dir(), f"no schemas at {SCHEMAS}"
    properties, required = fields("routine.completed.schema.json")
    assert required == {"runID", "attempt", "outcome"} and "result" in properties


@pytest.mark.parametrize("key", sorted(protocol.OUTGOING))
def test_what_the_sdk_sends_matches_the_schema(key: str):
    required, allowed = protocol.OUTGOING[key]
    properties, schema_required = fields(schema_file(key))
    assert required <= allowed, f"{key}: a required field is not allowed"
    assert allowed <= properties, f"{key}: the SDK may send {sorted(allowed - properties)}, unknown to the schema"
    assert schema_required <= required, f"{key}: the schema requires {sorted(schema_required - required)}, which the SDK may omit"


@pytest.mark.parametrize("key", sorted(protocol.INBOX_READS))
def test_what_the_sdk_reads_from_its_inbox_is_in_the_schema(key: str):
    properties, _ = fields(schema_file(key, inbox=True))
    reads = protocol.INBOX_READS[key]
    assert reads <= properties, f"{key}: the SDK reads {sorted(reads - properties)}, unknown to the schema"


@pytest.mark.parametrize("key", sorted(protocol.REPLY_READS))
def test_what_the_sdk_reads_from_replies_is_in_the_schema(key: str):
    properties, _ = fields(schema_file(key))
    reads = protocol.REPLY_READS[key]
    assert reads <= properties, f"{key}: the SDK reads {sorted(reads - properties)}, unknown to the schema"


def test_child_spec_options_are_run_spec_fields():
    properties, _ = fields("routine.request_start.schema.json")
    assert protocol.SPEC_OPTIONS <= properties, sorted(protocol.SPEC_OPTIONS - properties)
    assert set(protocol.SPEC_ALIASES.values()) <= protocol.SPEC_OPTIONS


def test_the_error_object_of_a_failure_matches_run_error():
    schema = _load("defs.schema.json")["$defs"]["runError"]
    sent = failure("boom", "ValueError", True)
    assert set(sent) <= set(schema["properties"]) and set(schema["required"]) <= set(sent)


def test_enumerations_match_the_schema():
    assert set(protocol.LOG_LEVELS) == enum("logLevel")
    assert protocol.REPORTABLE_STATUSES <= enum("workerStatus")
    assert protocol.TERMINAL_RUN_STATUSES <= enum("runStatus")
    codes = set(_load("error.schema.json")["properties"]["code"]["enum"])
    assert protocol.REGISTER_AGAIN_CODES <= codes and protocol.RETRYABLE_CODES <= codes
