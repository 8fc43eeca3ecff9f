"""The JSON Schema subset the agent constrains generation with (onnxruntime-genai guidance, llguidance inside),
checked and validated here in plain Python: a schema outside the subset is refused naming the keyword and where
it sits, and every structured answer is validated against its schema before it is returned.

Accepted: type (one or a list), enum, const, properties, required, additionalProperties (bool or schema), items,
minItems, maxItems, minLength, maxLength, pattern, minimum, maximum, exclusiveMinimum, exclusiveMaximum, anyOf,
local $ref (#/$defs/NAME, #/definitions/NAME) with $defs/definitions, and the annotations title, description,
default, examples, $schema, $id, $comment. Anything else (format, oneOf, allOf, not, if/then/else,
patternProperties, ...) is refused rather than silently ignored.
"""
from __future__ import annotations

import math
import re

TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment"}
KEYWORDS = {"type", "enum", "const", "properties", "required", "additionalProperties", "items", "minItems",
            "maxItems", "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum",
            "exclusiveMaximum", "anyOf", "$ref", "$defs", "definitions"} | ANNOTATIONS
MAX_REF_DEPTH = 64


class SchemaInvalid(ValueError):
    """The schema is not valid, or uses what the agent cannot honour; the message names the keyword and path."""


def check_schema(schema, where: str = "$") -> None:
    """Raises SchemaInvalid naming the first problem; returns None for a schema the agent can honour."""
    _check(schema, where, schema)


def _count(s: dict, key: str, where: str) -> None:
    if key in s and (isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 0):
        raise SchemaInvalid(f"{where}.{key} must be a non-negative integer")


def _check(s, where: str, root) -> None:
    if isinstance(s, bool):
        return
    if not isinstance(s, dict):
        raise SchemaInvalid(f"{where} must be a schema object (or true/false), got {type(s).__name__}")
    unknown = sorted(set(s) - KEYWORDS)
    if unknown:
        raise SchemaInvalid(f"{where} uses {', '.join(unknown)}, which this server cannot honour "
                            f"(supported: {', '.join(sorted(KEYWORDS - ANNOTATIONS))})")
    t = s.get("type")
    if t is not None:
        ts = t if isinstance(t, list) else [t]
        if not ts or not all(isinstance(x, str) and x in TYPES for x in ts):
            raise SchemaInvalid(f"{where}.type must be one of {', '.join(TYPES)} (or a list of them), got {t!r}")
    if "enum" in s and (not isinstance(s["enum"], list) or not s["enum"]):
        raise SchemaInvalid(f"{where}.enum must be a non-empty list")
    if "properties" in s:
        if not isinstance(s["properties"], dict):
            raise SchemaInvalid(f"{where}.properties must be an object")
        for k, sub in s["properties"].items():
            _check(sub, f"{where}.properties.{k}", root)
    if "required" in s:
        r = s["required"]
        if not isinstance(r, list) or not all(isinstance(x, str) for x in r) or len(set(r)) != len(r):
            raise SchemaInvalid(f"{where}.required must be a list of distinct strings")
    if "additionalProperties" in s:
        _check(s["additionalProperties"], f"{where}.additionalProperties", root)
    if "items" in s:
        _check(s["items"], f"{where}.items", root)
    for key in ("minItems", "maxItems", "minLength", "maxLength"):
        _count(s, key, where)
    for lo, hi in (("minItems", "maxItems"), ("minLength", "maxLength"), ("minimum", "maximum")):
        if lo in s and hi in s and isinstance(s[lo], (int, float)) and isinstance(s[hi], (int, float)) \
                and s[lo] > s[hi]:
            raise SchemaInvalid(f"{where}.{lo} ({s[lo]}) is above {where}.{hi} ({s[hi]})")
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in s and (isinstance(s[key], bool) or not isinstance(s[key], (int, float))):
            raise SchemaInvalid(f"{where}.{key} must be a number")
    if "pattern" in s:
        if not isinstance(s["pattern"], str):
            raise SchemaInvalid(f"{where}.pattern must be a string")
        try:
            re.compile(s["pattern"])
            nested = _nested_repetition(s["pattern"])
        except (re.error, RecursionError, OverflowError, ValueError) as e:
            raise SchemaInvalid(f"{where}.pattern is not a valid regular expression: {e}") from None
        if nested:
            raise SchemaInvalid(f"{where}.pattern repeats a group that itself repeats or alternates ({nested}); "
                                f"such patterns make backtracking checks exponential and are not accepted")
    if "anyOf" in s:
        if not isinstance(s["anyOf"], list) or not s["anyOf"]:
            raise SchemaInvalid(f"{where}.anyOf must be a non-empty list of schemas")
        for i, sub in enumerate(s["anyOf"]):
            _check(sub, f"{where}.anyOf[{i}]", root)
    for key in ("$defs", "definitions"):
        if key in s:
            if not isinstance(s[key], dict):
                raise SchemaInvalid(f"{where}.{key} must be an object")
            for k, sub in s[key].items():
                _check(sub, f"{where}.{key}.{k}", root)
    if "$ref" in s:
        _resolve(s["$ref"], root, where)


def _nested_repetition(pattern: str) -> str:
    """The first repeated group holding a repetition or an alternation ('' when none): the answer is checked with
    Python's backtracking re, where such a pattern (e.g. (a+)+$) can take exponential time."""
    from re import _parser

    def walk(items, inside: bool) -> str:
        for op, av in items:
            name = str(op)
            if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                lo, hi, sub = av
                if hi > lo and inside:   # a fixed count ({3}) is not ambiguous
                    return "a repetition inside a repetition"
                found = walk(sub, inside or hi > 1)
            elif name == "BRANCH":
                if inside:
                    return "an alternation inside a repetition"
                found = next((f for f in (walk(b, inside) for b in av[1]) if f), "")
            elif name in ("SUBPATTERN", "ATOMIC_GROUP", "ASSERT", "ASSERT_NOT"):
                found = walk(av[-1], inside)
            else:
                found = ""
            if found:
                return found
        return ""

    return walk(_parser.parse(pattern), False)


def _resolve(ref, root, where: str):
    m = re.fullmatch(r"#/(\$defs|definitions)/([^/]+)", ref) if isinstance(ref, str) else None
    defs = root.get(m.group(1)) if m and isinstance(root, dict) else None
    if not isinstance(defs, dict) or m.group(2) not in defs:
        raise SchemaInvalid(f"{where}.$ref {ref!r} must point into this schema's $defs or definitions "
                            f"(#/$defs/NAME) and name a definition that exists")
    return root[m.group(1)][m.group(2)]


def _type_of(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "integer" if v.is_integer() else "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def _same(a, b) -> bool:
    return _type_of(a) == _type_of(b) and a == b or (
        _type_of(a) in ("integer", "number") and _type_of(b) in ("integer", "number") and a == b)


def errors(value, schema, where: str = "$") -> list[str]:
    """Where `value` breaks `schema` (a schema check_schema accepted): [] when it validates."""
    out: list[str] = []
    _validate(value, schema, where, schema, out, 0)
    return out


def _validate(v, s, where: str, root, out: list, depth: int) -> None:
    if s is True:
        return
    if s is False:
        out.append(f"{where}: no value is allowed here")
        return
    if depth > MAX_REF_DEPTH:
        out.append(f"{where}: schema nested (through $ref/anyOf) more than {MAX_REF_DEPTH} deep")
        return
    if "$ref" in s:
        _validate(v, _resolve(s["$ref"], root, where), where, root, out, depth + 1)
    t = s.get("type")
    if t is not None:
        ts = t if isinstance(t, list) else [t]
        vt = _type_of(v)
        if not (vt in ts or (vt == "integer" and "number" in ts)):
            out.append(f"{where}: expected {' or '.join(ts)}, got {vt}")
            return
    if "enum" in s and not any(_same(v, e) for e in s["enum"]):
        out.append(f"{where}: {v!r} is not one of {s['enum']!r}")
    if "const" in s and not _same(v, s["const"]):
        out.append(f"{where}: {v!r} is not {s['const']!r}")
    if "anyOf" in s:
        def fails(sub) -> list:
            found: list = []
            _validate(v, sub, where, root, found, depth + 1)
            return found
        if all(fails(sub) for sub in s["anyOf"]):
            out.append(f"{where}: matches none of anyOf")
    if isinstance(v, dict):
        props = s.get("properties", {})
        for k in s.get("required", ()):
            if k not in v:
                out.append(f"{where}: missing required property {k!r}")
        extra = s.get("additionalProperties", True)
        for k, item in v.items():
            if k in props:
                _validate(item, props[k], f"{where}.{k}", root, out, depth)
            elif extra is False:
                out.append(f"{where}: property {k!r} is not allowed")
            elif isinstance(extra, dict):
                _validate(item, extra, f"{where}.{k}", root, out, depth)
    elif isinstance(v, list):
        if len(v) < s.get("minItems", 0) or len(v) > s.get("maxItems", math.inf):
            out.append(f"{where}: {len(v)} items is outside minItems/maxItems")
        if "items" in s:
            for i, item in enumerate(v):
                _validate(item, s["items"], f"{where}[{i}]", root, out, depth)
    elif isinstance(v, str):
        if len(v) < s.get("minLength", 0) or len(v) > s.get("maxLength", math.inf):
            out.append(f"{where}: a string of {len(v)} characters is outside minLength/maxLength")
        if "pattern" in s and not re.search(s["pattern"], v):
            out.append(f"{where}: {v!r} does not match pattern {s['pattern']!r}")
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        if v < s.get("minimum", -math.inf) or v > s.get("maximum", math.inf) \
                or ("exclusiveMinimum" in s and v <= s["exclusiveMinimum"]) \
                or ("exclusiveMaximum" in s and v >= s["exclusiveMaximum"]):
            out.append(f"{where}: {v} is outside the allowed range")


def guidance_text(schema) -> str:
    """The schema as onnxruntime-genai's json_schema guidance takes it: compact JSON (no free whitespace, which a
    small model fills with newlines until it runs out of tokens)."""
    import json

    s = dict(schema) if isinstance(schema, dict) else {"anyOf": [schema]}
    s["x-guidance"] = {"whitespace_flexible": False}
    return json.dumps(s)
