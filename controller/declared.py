"""The schema engine's verdict on a YAML document, as positioned diagnostics.

kiln.yaml and its provider sections are declared as engine specs (:mod:`agent.schema`);
:func:`check_document` validates a mapping of a :class:`~controller.stepfiles.loader.Document`
against one and pins every problem at its key or value. Messages name the setting by its
dotted path (``providers.local.engine``); a spec's ``expect`` says what a value must be and
``show: kind`` names a bad value by its kind ("got a string") instead of its text. A message
the schema words in full (:class:`~agent.schema.Said`: ``messages``, ``refused``, rules) is
shown as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kiln.agent.schema import ArgError, Code, validate
from kiln.controller.model import Diagnostic
from kiln.controller.stepfiles.loader import kind_of

DiagFn = Callable[[tuple[Any, ...], str, bool], Diagnostic]


def dotted(path: tuple[Any, ...]) -> str:
    """``providers.aws.publish.launch_templates[0].name``."""
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else f".{step}" if text else str(step)
    return text


def spec_at(schema: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    """The spec of the value at ``path`` ({} where the declaration says nothing)."""
    spec: dict[str, Any] = {"type": "object", **schema}
    for step in path:
        kind = spec.get("type")
        if kind == "any_of":  # the option a step into it leads through: an index a list's, a key a mapping's
            wanted = ("list",) if isinstance(step, int) else ("object", "map", "dict")
            spec = next((o for o in spec["options"] if o.get("type") in wanted), {})
            kind = spec.get("type")
        if kind == "object":
            spec = spec.get("args", {}).get(step, {})
        elif kind == "list" and isinstance(step, int):
            spec = spec.get("items") or {}
        elif kind == "map":
            spec = spec.get("values") or {}
        else:
            return {}
    return spec


def value_at(data: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        if data is not None and not isinstance(data, (dict, list)):
            return data  # a shorthand (``retention: 0``) stands for the mapping it sets
        try:
            data = data[step]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def message_for(error: ArgError, schema: dict[str, Any], data: Any, prefix: tuple[Any, ...]) -> str:
    """The message of one engine error, naming the setting by its full dotted path."""
    full = prefix + error.path
    if error.code == Code.UNKNOWN_KEY and "key_noun" not in spec_at(schema, error.path[:-1]):
        hint = f" (did you mean '{error.suggestion}'?)" if error.suggestion else ""
        return f"unknown setting '{dotted(full)}'{hint}"
    if error.code == Code.UNKNOWN_KEY or error.complete:
        return error.message
    if error.code == Code.MISSING and len(error.names) == 1:
        return f"{dotted(full + error.names)} is required"
    if not error.path and error.code == Code.WRONG_TYPE and "expect" in schema:
        return f"{dotted(prefix)} must be {schema['expect']}, got {data!r}"
    if error.code == Code.MISSING or not error.path:
        return f"{dotted(full)}: {error.message}" if full else error.message
    spec = spec_at(schema, error.path)
    if error.at_key or "expect" not in spec:
        return error.message if error.at_key else f"{dotted(full)}: {error.message}"
    value = value_at(data, error.path)
    shown = kind_of(value) if spec.get("show") == "kind" else repr(value)
    return f"{dotted(full)} must be {spec['expect']}, got {shown}"


def check_document(
    schema: dict[str, Any], data: Any, diag: DiagFn, prefix: tuple[Any, ...] = ()
) -> tuple[dict[str, Any], list[Diagnostic]]:
    """(normalised values with defaults, diagnostics) of ``data`` (the mapping at ``prefix``) against ``schema``."""
    values, errors = validate(schema, data)
    return values, [diag(prefix + e.path, message_for(e, schema, data, prefix), e.at_key) for e in errors]
