"""The API reference at /docs, read from the OpenAPI document and rendered on the server.

No Swagger UI: it loads from a CDN and runs inline script, which the CSP forbids and an offline
network cannot fetch. This turns the document into plain rows a template shows: each operation
with its parameters, request body, responses and auth, and every schema with its fields. A type
is a list of parts, text or a schema name the page links to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Part = dict[str, str]  # {"text": "array of "} or {"ref": "SystemOut"}


@dataclass
class Field:
    name: str
    type: list[Part]
    required: bool
    description: str = ""


@dataclass
class Body:
    media: str
    type: list[Part]


@dataclass
class Reply:
    status: str
    description: str
    bodies: list[Body]
    headers: list[Field]


@dataclass
class Operation:
    method: str
    path: str
    anchor: str
    tag: str
    summary: str
    description: str
    auth: list[str]
    parameters: list[Field]
    body: Body | None
    body_required: bool
    replies: list[Reply]


@dataclass
class Schema:
    name: str
    description: str
    fields: list[Field] = field(default_factory=list)
    type: list[Part] = field(default_factory=list)  # for a schema that is no object (an enum, a list)


@dataclass
class Reference:
    title: str
    version: str
    description: str
    schemes: list[Field]
    tags: list[tuple[str, list[Operation]]]
    schemas: list[Schema]


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def type_of(schema: dict[str, Any] | None) -> list[Part]:
    """A schema as words: `array of SystemOut`, `string (date-time) or null`, `one of: a, b`."""
    if not schema:
        return [{"text": "any"}]
    if "$ref" in schema:
        return [{"ref": _ref_name(schema["$ref"])}]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            parts: list[Part] = []
            for i, sub in enumerate(schema[key]):
                if i:
                    parts.append({"text": " or " if key != "allOf" else " and "})
                parts.extend(type_of(sub))
            return parts
    if "enum" in schema:
        return [{"text": "one of: " + ", ".join(str(v) for v in schema["enum"])}]
    if "const" in schema:
        return [{"text": f"{schema['const']!r}"}]
    kind = schema.get("type", "any")
    if kind == "array":
        return [{"text": "array of "}, *type_of(schema.get("items"))]
    if kind == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return [{"text": "object of "}, *type_of(extra)]
        return [{"text": "object"}]
    fmt = schema.get("format")
    return [{"text": f"{kind} ({fmt})" if fmt else str(kind)}]


def _fields(schema: dict[str, Any]) -> list[Field]:
    required = set(schema.get("required", []))
    return [Field(name, type_of(sub), name in required, sub.get("description", ""))
            for name, sub in schema.get("properties", {}).items()]


def _bodies(content: dict[str, Any]) -> list[Body]:
    return [Body(media, type_of(spec.get("schema"))) for media, spec in content.items()]


def _operation(path: str, method: str, op: dict[str, Any], default_auth: list[str]) -> Operation:
    security = op.get("security")
    auth = default_auth if security is None else sorted({name for req in security for name in req})
    params = [Field(f"{p['name']} ({p['in']})", type_of(p.get("schema")), bool(p.get("required")),
                    p.get("description") or p.get("schema", {}).get("description", ""))
              for p in op.get("parameters", [])]
    request = op.get("requestBody") or {}
    bodies = _bodies(request.get("content", {}))
    replies = [Reply(status, spec.get("description", ""), _bodies(spec.get("content", {})),
                     [Field(name, type_of(h.get("schema")), False, h.get("description", ""))
                      for name, h in spec.get("headers", {}).items()])
               for status, spec in op.get("responses", {}).items()]
    anchor = f"{method}{path}".replace("/", "-").replace("{", "").replace("}", "").strip("-")
    return Operation(method.upper(), path, anchor, (op.get("tags") or ["other"])[0], op.get("summary", ""),
                     op.get("description", ""), auth, params, bodies[0] if bodies else None,
                     bool(request.get("required")), replies)


def reference(openapi: dict[str, Any]) -> Reference:
    components = openapi.get("components", {})
    default_auth = sorted({name for req in openapi.get("security", []) for name in req})
    by_tag: dict[str, list[Operation]] = {}
    for path, methods in openapi.get("paths", {}).items():
        for method, op in methods.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                o = _operation(path, method, op, default_auth)
                by_tag.setdefault(o.tag, []).append(o)
    schemes = [Field(name, [{"text": f"{s.get('type', '')} {s.get('scheme', '')}".strip()}], True,
                     s.get("description", ""))
               for name, s in components.get("securitySchemes", {}).items()]
    schemas = []
    for name, s in sorted(components.get("schemas", {}).items()):
        fields = _fields(s)
        schemas.append(Schema(name, s.get("description", ""), fields, [] if fields else type_of(s)))
    info = openapi.get("info", {})
    return Reference(info.get("title", "API"), info.get("version", ""), info.get("description", ""), schemes,
                     list(by_tag.items()), schemas)
