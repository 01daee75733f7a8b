"""Declarative argument schemas: one per module and per check.

A schema is plain data beside the code it describes::

    SCHEMA = {
        "description": "Manage a file's type, mode and owner.",
        "args": {
            "path": {"type": "path", "required": True, "aliases": ["dest"]},
            "state": {"type": "str", "choices": ["file", "directory", "absent"], "default": "file"},
            "mode": {"type": "mode"},
        },
        "mutually_exclusive": [["content", "src"]],
        "required_one_of": [["content", "src"]],
        "check_mode": "full",          # full | none
        "diff": True,
        "example": "- file: {path: /srv/www, state: directory, mode: \\"0755\\"}",
    }

The same data drives validation (here, on the controller before launch and again on
the box after templating), the JSON Schema export and the reference docs.
Stdlib only: this runs inside the agent on Python >= 3.9.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Dict, List, Tuple

TYPES = ("str", "int", "bool", "list", "dict", "mode", "path", "raw", "float")
MODE_RE = re.compile(r"^0?[0-7]{3,4}$|^[ugoa]*[-+=][rwxXst]*(,[ugoa]*[-+=][rwxXst]*)*$")


class ArgError:
    """One problem with one argument (``key`` None: the step as a whole)."""

    __slots__ = ("key", "message")

    def __init__(self, key: str | None, message: str) -> None:
        self.key = key
        self.message = message

    def __repr__(self) -> str:
        return f"ArgError({self.key!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArgError) and (self.key, self.message) == (other.key, other.message)


def is_templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def did_you_mean(word: str, candidates: List[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(kind: str, value: Any, spec: Dict[str, Any]) -> Tuple[Any, str | None]:
    """Return (value, error). Templated strings pass; they are checked again once rendered."""
    if is_templated(value) and kind not in ("list", "dict"):
        return value, None
    if kind in ("str", "path"):
        if isinstance(value, bool):
            return value, f"expected a string, got the boolean {str(value).lower()}; quote it"
        if isinstance(value, (int, float)):
            return str(value), None
        if not isinstance(value, str):
            return value, f"expected a string, got {type(value).__name__}"
        if kind == "path" and not value.startswith("/") and not spec.get("relative"):
            return value, f"expected an absolute path, got '{value}'"
        return value, None
    if kind == "mode":
        if isinstance(value, bool) or not isinstance(value, str):
            return value, (
                f"mode must be a quoted string such as \"0644\"; YAML read {value!r} as a number "
                "(an unquoted mode is the classic octal trap)"
            )
        if not MODE_RE.match(value):
            return value, f"'{value}' is not a file mode (octal like \"0644\" or symbolic like \"u+x\")"
        return value, None
    if kind == "int":
        if isinstance(value, bool):
            return value, "expected an integer, got a boolean"
        if isinstance(value, int):
            return value, None
        if isinstance(value, str) and re.match(r"^-?\d+$", value.strip()):
            return int(value), None
        return value, f"expected an integer, got {value!r}"
    if kind == "float":
        if isinstance(value, bool):
            return value, "expected a number, got a boolean"
        try:
            return float(value), None
        except (TypeError, ValueError):
            return value, f"expected a number, got {value!r}"
    if kind == "bool":
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value.lower() in ("yes", "true", "on", "no", "false", "off"):
            return value.lower() in ("yes", "true", "on"), None
        return value, f"expected true or false, got {value!r}"
    if kind == "list":
        if isinstance(value, str):
            return [value] if not spec.get("strict_list") else value, (
                None if not spec.get("strict_list") else "expected a list"
            )
        if not isinstance(value, list):
            return value, f"expected a list, got {type(value).__name__}"
        elements = spec.get("elements")
        if elements:
            out = []
            for item in value:
                coerced, err = _coerce(elements, item, {})
                if err:
                    return value, f"list item {item!r}: {err}"
                out.append(coerced)
            return out, None
        return value, None
    if kind == "dict":
        if not isinstance(value, dict):
            return value, f"expected a mapping, got {type(value).__name__}"
        return value, None
    return value, None


def validate(schema: Dict[str, Any], params: Any) -> Tuple[Dict[str, Any], List[ArgError]]:
    """Check ``params`` against ``schema``; return (normalised params with defaults, errors)."""
    args: Dict[str, Dict[str, Any]] = schema.get("args", {})
    if params is None:
        params = {}
    free_form = schema.get("free_form")
    if not isinstance(params, dict):
        if free_form and isinstance(params, (str, int, float)) and not isinstance(params, bool):
            params = {free_form: params}
        else:
            return {}, [ArgError(None, f"arguments must be a mapping, got {type(params).__name__}")]
    alias_of = {alias: name for name, spec in args.items() for alias in spec.get("aliases", [])}
    errors: List[ArgError] = []
    result: Dict[str, Any] = {}
    for key, value in params.items():
        name = alias_of.get(key, key)
        if name not in args:
            known = sorted(list(args) + list(alias_of))
            errors.append(ArgError(key, f"unknown argument '{key}'{did_you_mean(str(key), known)}"))
            continue
        if name in result:
            errors.append(ArgError(key, f"'{key}' repeats '{name}'"))
            continue
        spec = args[name]
        value, err = _coerce(spec.get("type", "str"), value, spec)
        if err:
            errors.append(ArgError(key, err))
            continue
        choices = spec.get("choices")
        if choices and not is_templated(value) and value not in choices:
            errors.append(ArgError(key, f"'{value}' is not one of: {', '.join(map(str, choices))}"
                                   f"{did_you_mean(str(value), [str(c) for c in choices])}"))
            continue
        result[name] = value
    for group in schema.get("mutually_exclusive", []):
        given = [name for name in group if name in result]
        if len(given) > 1:
            errors.append(ArgError(given[1], f"'{given[0]}' and '{given[1]}' are mutually exclusive"))
    for group in schema.get("required_one_of", []):
        if not any(name in result for name in group):
            errors.append(ArgError(None, f"one of {', '.join(group)} is required"))
    for name, spec in args.items():
        if spec.get("required") and name not in result:
            errors.append(ArgError(None, f"missing required argument '{name}'"))
    for when_key, when_value, needed in schema.get("required_if", []):
        if result.get(when_key, args.get(when_key, {}).get("default")) == when_value:
            for name in needed:
                if name not in result:
                    errors.append(ArgError(None, f"'{name}' is required when {when_key} is {when_value}"))
    for name, spec in args.items():
        if name not in result and "default" in spec:
            result[name] = spec["default"]
    return result, errors


def json_schema(schema: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON Schema of one module's or check's arguments (for editors' YAML support)."""
    mapping = {"str": "string", "path": "string", "mode": "string", "int": "integer",
               "float": "number", "bool": "boolean", "list": "array", "dict": "object"}
    props: Dict[str, Any] = {}
    for name, spec in schema.get("args", {}).items():
        kind = spec.get("type", "str")
        prop: Dict[str, Any] = {"description": spec.get("description", "")}
        if kind in mapping:
            prop["anyOf"] = [{"type": mapping[kind]}, {"type": "string", "pattern": r"\{\{"}]
            if kind == "list":
                prop["anyOf"].append({"type": "string"})
        if "choices" in spec:
            prop["enum"] = list(spec["choices"])
        if "default" in spec:
            prop["default"] = spec["default"]
        props[name] = prop
        for alias in spec.get("aliases", []):
            props[alias] = dict(prop, description=f"alias of {name}")
    required = [n for n, s in schema.get("args", {}).items() if s.get("required")]
    out: Dict[str, Any] = {"type": "object", "description": schema.get("description", ""),
                           "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out
