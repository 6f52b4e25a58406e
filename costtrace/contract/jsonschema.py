"""JSON Schema (draft 2020-12) for the wire contract, generated from the Python types.

Why JSON Schema and not Avro: the wire format is the contract's plain JSON,
keyed by account, so that any producer (kcat, a service in any language) can
publish with nothing from this project. JSON Schema validates exactly those
bytes; Avro would validate a different encoding, or need its JSON form with
wrapped unions, which is not what producers send.

The files under `costtrace/contract/v1/` are written by `costtrace schemas write`; a
test fails if they drift from the types, and another checks on random inputs
that a JSON Schema validator and `parse_event` give the same verdict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import msgspec
import msgspec.inspect as mi

from costtrace.contract.events import EVENT_TYPES
from costtrace.contract.records import Kind, Reason, Record, Rejection
from costtrace.contract.timestamps import FIRST_YEAR, LAST_YEAR, YEAR_PATTERN

VERSION: Final = "v1"
DIRECTORY: Final = Path(__file__).parent / VERSION
_DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"
_INTERNAL_PREFIX: Final = "__costtrace_"
# any string but one holding U+0000, which no PostgreSQL text column stores (docs/semantics.md)
NO_NUL_PATTERN: Final = "^[^\\u0000]*$"


def _urn(name: str) -> str:
    return f"urn:costtrace:schemas:{VERSION}:{name}"


def _type_schema(t: mi.Type, name: str) -> dict[str, Any]:
    if isinstance(t, mi.StrType):
        out: dict[str, Any] = {"type": "string"}
        if t.min_length is not None:
            out["minLength"] = t.min_length
        if t.max_length is not None:
            out["maxLength"] = t.max_length
        if name == "occurred_at":
            out["format"] = "date-time"  # its pattern excludes U+0000 too
            out["pattern"] = YEAR_PATTERN
            years = f"years {FIRST_YEAR} to {LAST_YEAR}"
            out["description"] = f"RFC 3339 date-time with an offset, {years}; compared as an instant"
        else:
            out["pattern"] = NO_NUL_PATTERN
        return out
    if isinstance(t, mi.IntType):
        out = {
            "type": "integer",
            "description": "written without fraction or exponent (2, not 2.0): amounts are never floats",
        }
        if t.ge is not None:
            out["minimum"] = t.ge
        if t.le is not None:
            out["maximum"] = t.le
        return out
    if isinstance(t, mi.UnionType):
        non_null = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if len(non_null) == 1 and len(t.types) == 2:
            inner = _type_schema(non_null[0], name)
            inner["type"] = [inner["type"], "null"]
            return inner
    raise TypeError(f"no JSON Schema mapping for {t!r} ({name})")  # pragma: no cover


def _struct_schema(cls: type[msgspec.Struct]) -> tuple[dict[str, Any], list[str]]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    props: dict[str, Any] = {}
    required: list[str] = []
    if info.tag_field is not None:
        props[info.tag_field] = {"const": info.tag}
        required.append(info.tag_field)
    for f in info.fields:
        if f.encode_name.startswith(_INTERNAL_PREFIX):
            continue
        props[f.encode_name] = _type_schema(f.type, f.encode_name)
        if f.required:
            required.append(f.encode_name)
    return props, required


def event_schema(cls: type[msgspec.Struct]) -> dict[str, Any]:
    props, required = _struct_schema(cls)
    tag = props["type"]["const"]
    return {
        "$schema": _DRAFT,
        "$id": _urn(f"{tag}.schema.json"),
        "title": f"costtrace `{tag}` event ({VERSION})",
        "description": (
            "Unknown extra fields are allowed and ignored. An optional field sent as null counts as absent."
        ),
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": True,
    }


def envelope_schema() -> dict[str, Any]:
    return {
        "$schema": _DRAFT,
        "$id": _urn("event.schema.json"),
        "title": f"any costtrace input event ({VERSION}), chosen by `type`",
        "oneOf": [{"$ref": _urn(f"{_tag(c)}.schema.json")} for c in EVENT_TYPES],
    }


def _tag(cls: type[msgspec.Struct]) -> str:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType) and isinstance(info.tag, str)
    return info.tag


def record_schema() -> dict[str, Any]:
    rec_props, rec_required = _struct_schema(Record)
    rec_props["kind"] = {"enum": [k.value for k in Kind if k is not Kind.REJECTED]}
    rec_props["amount"] = {"type": "integer", "description": "signed, in the currency's smallest unit"}
    rej_props, rej_required = _struct_schema(Rejection)
    rej_props["kind"] = {"const": Kind.REJECTED.value}
    rej_props["reason"] = {"enum": [r.value for r in Reason]}
    for key in ("event_id", "account_id"):
        rej_props[key] = {"type": ["string", "null"]}
    return {
        "$schema": _DRAFT,
        "$id": _urn("record.schema.json"),
        "title": f"costtrace output record ({VERSION}): an allocation record or a rejection",
        "oneOf": [
            {
                "title": "allocation record",
                "type": "object",
                "properties": rec_props,
                "required": rec_required,
                "additionalProperties": False,
            },
            {
                "title": "rejection",
                "type": "object",
                "properties": rej_props,
                "required": rej_required,
                "additionalProperties": False,
            },
        ],
    }


def all_schemas() -> dict[str, dict[str, Any]]:
    out = {f"{_tag(c)}.schema.json": event_schema(c) for c in EVENT_TYPES}
    out["event.schema.json"] = envelope_schema()
    out["record.schema.json"] = record_schema()
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write_all(directory: Path = DIRECTORY) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_schemas().items():
        path = directory / name
        path.write_text(render(schema))
        written.append(path)
    return written
