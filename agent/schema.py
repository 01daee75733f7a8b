"""The one declarative schema engine: module and check arguments, step keywords, kiln.yaml.

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

The same data drives validation (:func:`validate`: on the controller before launch,
again on the box after templating), the JSON Schema (:func:`json_schema`), and the
reference docs (:func:`rows`). Every problem is an :class:`ArgError` with a
:class:`Code`: callers branch on the code, never on the message.

Beyond module arguments, a spec may nest (``object`` with its own ``args``, ``list``
with ``items``, ``map`` with ``values``) and constrain (``minimum``,
``exclusive_minimum``, ``maximum``, ``pattern``, ``min_items``, ``unique``). ``strict: True``
refuses what YAML-ish coercion would accept (``"3"`` for an int, ``"yes"`` for a bool);
``templated: False`` refuses ``"{{ x }}"`` where it cannot be rendered. ``checks``
(a list of ``fn(value) -> message | None``) and a schema's ``rules``
(``fn(result) -> [(path, message)]``, run once the mapping is well-formed) carry
semantic checks; they are the controller's, never serialised, and :func:`json_schema`
leaves them out. ``any_of`` is a value of one of several ``options`` (a list, or a mapping
of lists). ``messages`` words a constraint's refusal in full (``min_items``, ``unique``,
``choices`` with ``{value}`` and ``{hint}``, ``required``) and ``refused`` maps a value to
the reason it is refused; such messages, and the rules', name their setting themselves
(:class:`Said`). A ``nullable`` argument given as null takes its default. ``foreign_args``
(name -> who takes it) are arguments of another implementation the module stands for (package:
other package managers'): accepted with any value and handed to the module, whose run decides.
``mutually_exclusive`` counts only literal values: a templated one may render to omit, so the box,
which validates the rendered arguments again, decides then.
Stdlib only: this runs inside the agent on Python >= 3.9.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

TYPES = ("str", "int", "bool", "list", "dict", "mode", "path", "raw", "float", "number", "object", "map")
MODE_RE = re.compile(r"^0?[0-7]{3,4}$|^[ugoa]*[-+=][rwxXst]*(,[ugoa]*[-+=][rwxXst]*)*$")
BOOL_WORDS = ("yes", "true", "on", "no", "false", "off")
INT_TEXT = r"^\s*-?\d+\s*$"
TEMPLATED = {"type": "string", "pattern": r"\{\{|\{%"}


class Code:
    """What kind of problem an :class:`ArgError` is (compare with ``==``; the values are stable)."""

    UNKNOWN_KEY = "unknown_key"  # a key the schema does not know
    WRONG_TYPE = "wrong_type"  # a value of the wrong kind (a list where a string goes)
    MISSING = "missing"  # a required key is absent (or none of a required group)
    EXCLUSIVE = "exclusive"  # keys that cannot go together
    REPEATED = "repeated"  # a key given twice (under its name and an alias)
    BAD_VALUE = "bad_value"  # the right kind, but not allowed (choices, range, pattern, a semantic check)


CODES = frozenset(v for k, v in vars(Code).items() if k.isupper())


class Said(str):
    """A message worded in full by the schema (``messages``, ``refused``, a rule): shown as it is."""


class ArgError:
    """One problem with one argument (``key`` None: the mapping as a whole).

    ``path`` leads from the validated mapping to the value at fault (``("ssh", "cidrs", 0)``);
    ``at_key`` says the problem is the key itself (pin it there, not at the value);
    ``suggestion`` is the did-you-mean candidate, if any; ``names`` the arguments a
    ``missing`` or ``exclusive`` error is about.
    """

    __slots__ = ("key", "message", "code", "path", "suggestion", "at_key", "names")

    def __init__(
        self,
        key: Optional[str],
        message: str,
        code: str = Code.BAD_VALUE,
        path: Tuple[Any, ...] = (),
        suggestion: Optional[str] = None,
        at_key: bool = False,
        names: Tuple[str, ...] = (),
    ) -> None:
        self.key = key
        self.message = message
        self.code = code
        self.path = path or ((key,) if key is not None else ())
        self.suggestion = suggestion
        self.at_key = at_key
        self.names = names  # the arguments a missing or exclusive error is about

    def __repr__(self) -> str:
        return f"ArgError({self.key!r}, {self.message!r}, {self.code!r})"

    @property
    def complete(self) -> bool:
        """The message names its setting itself (:class:`Said`): a caller shows it without a prefix."""
        return isinstance(self.message, Said)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArgError) and (self.key, self.message) == (other.key, other.message)

    def under(self, prefix: Tuple[Any, ...]) -> "ArgError":
        key = prefix[0] if prefix else self.key
        return ArgError(key, self.message, self.code, prefix + self.path, self.suggestion, self.at_key, self.names)


def is_templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def closest(word: str, candidates: List[str]) -> Optional[str]:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, candidates: List[str]) -> str:
    close = closest(word, candidates)
    return f" (did you mean '{close}'?)" if close else ""


# --- one value ------------------------------------------------------------------------------
Problem = Tuple[Any, Optional[str], str]  # (value, message or None, code)


def said(spec: Dict[str, Any], constraint: str, default: str, **fields: Any) -> str:
    """The refusal of ``constraint``: the spec's own wording (``messages``) if it has one, else ``default``."""
    wording = spec.get("messages", {}).get(constraint)
    return Said(wording.format(**fields)) if wording else default


def _ok(value: Any) -> Problem:
    return value, None, Code.BAD_VALUE


def _wrong(value: Any, message: str) -> Problem:
    return value, message, Code.WRONG_TYPE


def _string(kind: str, value: Any, spec: Dict[str, Any]) -> Problem:
    if isinstance(value, bool):
        return _wrong(value, f"expected a string, got the boolean {str(value).lower()}; quote it")
    if isinstance(value, (int, float)) and not spec.get("strict"):
        value = str(value)
    if not isinstance(value, str):
        return _wrong(value, f"expected a string, got {type(value).__name__}")
    if kind == "path" and not value.startswith("/") and not spec.get("relative"):
        return value, f"expected an absolute path, got '{value}'", Code.BAD_VALUE
    return _ok(value)


def _mode(value: Any) -> Problem:
    if isinstance(value, bool) or not isinstance(value, str):
        return _wrong(
            value,
            f'mode must be a quoted string such as "0644"; YAML read {value!r} as a number '
            "(an unquoted mode is the classic octal trap)",
        )
    if not MODE_RE.match(value):
        return value, f'\'{value}\' is not a file mode (octal like "0644" or symbolic like "u+x")', Code.BAD_VALUE
    return _ok(value)


def _int(value: Any, spec: Dict[str, Any]) -> Problem:
    if isinstance(value, bool):
        return _wrong(value, "expected an integer, got a boolean")
    if isinstance(value, int):
        return _ok(value)
    if not spec.get("strict") and isinstance(value, str) and re.match(INT_TEXT, value):
        return _ok(int(value))
    return _wrong(value, f"expected {'a whole number' if spec.get('strict') else 'an integer'}, got {value!r}")


def _number(kind: str, value: Any, spec: Dict[str, Any]) -> Problem:
    if isinstance(value, bool):
        return _wrong(value, "expected a number, got a boolean")
    if kind == "number" or spec.get("strict"):
        if isinstance(value, (int, float)) and value == value and value not in (float("inf"), float("-inf")):
            return _ok(value)
        return _wrong(value, f"expected a number, got {value!r}")
    try:
        return _ok(float(value))
    except (TypeError, ValueError):
        return _wrong(value, f"expected a number, got {value!r}")


def _bool(value: Any, spec: Dict[str, Any]) -> Problem:
    if isinstance(value, bool):
        return _ok(value)
    if not spec.get("strict") and isinstance(value, str) and value.lower() in BOOL_WORDS:
        return _ok(value.lower() in ("yes", "true", "on"))
    if isinstance(value, str) and value.lower() in BOOL_WORDS:
        truth = "true" if value.lower() in ("yes", "true", "on") else "false"
        return _wrong(value, f"expected true or false, got the string {value!r}; write {truth}")
    return _wrong(value, f"expected true or false, got {value!r}")


def _list(value: Any, spec: Dict[str, Any]) -> Tuple[Any, Optional[str], str, List[ArgError]]:
    if isinstance(value, str) and not spec.get("strict_list") and not spec.get("strict"):
        value = [value]
    if not isinstance(value, list):
        return value, f"expected a list, got {type(value).__name__}", Code.WRONG_TYPE, []
    if len(value) < spec.get("min_items", 0):
        message = said(spec, "min_items", f"needs at least {spec['min_items']} item(s)", value=value)
        return value, message, Code.BAD_VALUE, []
    if spec.get("unique") and len({repr(v) for v in value}) != len(value):
        return value, said(spec, "unique", "lists an item twice", value=value), Code.BAD_VALUE, []
    items = spec.get("items") or ({"type": spec["elements"]} if spec.get("elements") else None)
    if not items:
        return value, None, Code.BAD_VALUE, []
    out, nested = [], []
    for index, item in enumerate(value):
        coerced, errors = check_value(items, item)
        if errors and not spec.get("items"):  # a flat list of scalars: one message for the list
            return value, f"list item {item!r}: {errors[0].message}", errors[0].code, []
        nested += [e.under((index,)) for e in errors]
        out.append(coerced)
    return out, None, Code.BAD_VALUE, nested


def _map(value: Any, spec: Dict[str, Any]) -> Tuple[Any, List[ArgError]]:
    out, nested = {}, []
    key_pattern = spec.get("key_pattern")
    for key, item in value.items():
        if key_pattern and not re.match(key_pattern, str(key)):
            message = spec.get("key_message", f"'{key}' is not a valid name")
            nested.append(ArgError(key, message.format(key=key), Code.BAD_VALUE, at_key=True))
            continue
        if key in spec.get("reserved_keys", ()):
            nested.append(ArgError(key, f"'{key}' is reserved", Code.BAD_VALUE, at_key=True))
            continue
        coerced, errors = check_value(spec["values"], item) if spec.get("values") else (item, [])
        nested += [e.under((key,)) for e in errors]
        out[key] = coerced
    return out, nested


def _limits(value: Any, spec: Dict[str, Any]) -> Optional[str]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in spec and value < spec["minimum"]:
            return f"must be >= {spec['minimum']}, got {value!r}"
        if "exclusive_minimum" in spec and not value > spec["exclusive_minimum"]:
            return f"must be > {spec['exclusive_minimum']}, got {value!r}"
        if "maximum" in spec and value > spec["maximum"]:
            return f"must be <= {spec['maximum']}, got {value!r}"
    if isinstance(value, str) and spec.get("pattern") and not re.search(spec["pattern"], value):
        return spec.get("pattern_message", "'{value}' does not match {pattern}").format(
            value=value, pattern=spec["pattern"]
        )
    if value in spec.get("reserved", ()):
        return f"'{value}' is reserved"
    for check in spec.get("checks", ()):
        message = check(value)
        if message:
            return message
    return None


def _fits(spec: Dict[str, Any], value: Any) -> bool:
    """``value`` is of the kind ``spec`` takes (its errors, if any, are the ones to report)."""
    kinds = {"list": list, "object": dict, "map": dict, "dict": dict, "bool": bool}
    wanted = kinds.get(spec.get("type", "str"))
    return wanted is not None and isinstance(value, wanted)


def _any_of(value: Any, spec: Dict[str, Any]) -> Tuple[Any, List[ArgError]]:
    """The first option that accepts ``value``; else the errors of the option of its kind (or the first's)."""
    verdicts = [(option, check_value(option, value)) for option in spec["options"]]
    for _, (coerced, errors) in verdicts:
        if not errors:
            return coerced, []
    fitting = [errors for option, (_, errors) in verdicts if _fits(option, value)]
    return value, (fitting or [verdicts[0][1][1]])[0]


def check_value(spec: Dict[str, Any], value: Any) -> Tuple[Any, List[ArgError]]:
    """One value against one spec: (normalised value, errors with paths relative to the value)."""
    kind = spec.get("type", "str")
    if is_templated(value) and kind not in ("list", "dict", "object", "map", "any_of") and spec.get("templated", True):
        return value, []
    if value is None and spec.get("nullable"):
        return value, []
    if kind == "any_of":
        return _any_of(value, spec)
    nested: List[ArgError] = []
    if kind in ("str", "path"):
        value, err, code = _string(kind, value, spec)
    elif kind == "mode":
        value, err, code = _mode(value)
    elif kind == "int":
        value, err, code = _int(value, spec)
    elif kind in ("float", "number"):
        value, err, code = _number(kind, value, spec)
    elif kind == "bool":
        value, err, code = _bool(value, spec)
    elif kind == "list":
        value, err, code, nested = _list(value, spec)
    elif kind == "object" and spec.get("free_form") and not isinstance(value, (dict, list, bool)):
        value, nested = validate(spec, value)  # the shorthand: a scalar sets the free-form argument
        err, code = None, Code.BAD_VALUE
    elif kind in ("dict", "object", "map"):
        if not isinstance(value, dict):
            return value, [ArgError(None, f"expected a mapping, got {type(value).__name__}", Code.WRONG_TYPE)]
        err, code = None, Code.BAD_VALUE
        if kind == "object":
            value, nested = validate(spec, value)
        elif kind == "map":
            value, nested = _map(value, spec)
    else:
        err, code = None, Code.BAD_VALUE
    if err:
        return value, [ArgError(None, err, code)]
    if nested:
        return value, nested
    refused = spec.get("refused", {})
    if isinstance(value, str) and value in refused:
        return value, [ArgError(None, Said(refused[value]), Code.BAD_VALUE)]
    choices = spec.get("choices")
    if choices and not is_templated(value) and value not in choices:
        suggestion = closest(str(value), [str(c) for c in choices])
        hint = f" (did you mean '{suggestion}'?)" if suggestion else ""
        message = said(
            spec, "choices", f"'{value}' is not one of: {', '.join(map(str, choices))}{hint}", value=value, hint=hint
        )
        return value, [ArgError(None, message, Code.BAD_VALUE, suggestion=suggestion)]
    problem = _limits(value, spec)
    return value, ([ArgError(None, problem, Code.BAD_VALUE)] if problem else [])


# --- a mapping ------------------------------------------------------------------------------
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
            message = f"arguments must be a mapping, got {type(params).__name__}"
            return {}, [ArgError(None, message, Code.WRONG_TYPE)]
    alias_of = {alias: name for name, spec in args.items() for alias in spec.get("aliases", [])}
    errors: List[ArgError] = []
    result: Dict[str, Any] = {}
    given = {alias_of.get(key, key) for key in params}  # a required argument given a bad value is not missing too
    foreign = schema.get("foreign_args", {})
    for key, value in params.items():
        name = alias_of.get(key, key)
        if name not in args and key in foreign:
            result[key] = value
            continue
        if name not in args:
            errors.append(_unknown(schema, key, sorted(list(args) + list(alias_of) + list(foreign))))
            continue
        if name in result:
            errors.append(ArgError(key, f"'{key}' repeats '{name}'", Code.REPEATED, at_key=True))
            continue
        value, found = check_value(args[name], value)
        if found:
            errors += [_at(key, e) for e in found]
            continue
        if value is None and "default" in args[name]:
            continue  # a nullable argument given as null: its default, filled in below
        result[name] = value
    errors += _groups(schema, args, result, given)
    for name, spec in args.items():
        if name not in result and "default" in spec:
            result[name] = spec["default"]
    if not errors:
        for rule in schema.get("rules", ()):
            errors += [ArgError(p[0] if p else None, Said(m), Code.BAD_VALUE, tuple(p)) for p, m in rule(result)]
    return result, errors


def _unknown(schema: Dict[str, Any], key: Any, known: List[str]) -> ArgError:
    suggestion = closest(str(key), known)
    hint = f" (did you mean '{suggestion}'?)" if suggestion else ""
    what = schema.get("key_noun", "argument")
    return ArgError(key, f"unknown {what} '{key}'{hint}", Code.UNKNOWN_KEY, suggestion=suggestion, at_key=True)


def _at(key: Any, error: ArgError) -> ArgError:
    """``error`` of the value under ``key``: the top-level ones keep today's key and message."""
    return error.under((key,))


def _groups(schema: Dict[str, Any], args: Dict[str, Any], result: Dict[str, Any], given: set) -> List[ArgError]:
    errors: List[ArgError] = []
    for group in schema.get("mutually_exclusive", []):
        # a template may render to omit (``{{ x | default(omit) }}``): only literal values exclude each other here;
        # on the box, arguments are rendered and the omitted ones gone before this runs again
        given = [name for name in group if name in result and not is_templated(result[name])]
        if len(given) > 1:
            message = f"'{given[0]}' and '{given[1]}' are mutually exclusive"
            errors.append(ArgError(given[1], message, Code.EXCLUSIVE, at_key=True, names=tuple(given[:2])))
    for group in schema.get("required_one_of", []):
        if not any(name in result for name in group):
            message = f"one of {', '.join(group)} is required"
            errors.append(ArgError(None, message, Code.MISSING, names=tuple(group)))
    for name, spec in args.items():
        if spec.get("required") and name not in result and name not in given:
            message = said(spec, "required", f"missing required argument '{name}'")
            errors.append(ArgError(None, message, Code.MISSING, names=(name,)))
    for when_key, when_value, needed in schema.get("required_if", []):
        if result.get(when_key, args.get(when_key, {}).get("default")) == when_value:
            for name in needed:
                if name not in result:
                    message = f"'{name}' is required when {when_key} is {when_value}"
                    errors.append(ArgError(None, message, Code.MISSING, names=(name,)))
    return errors


# --- JSON Schema ----------------------------------------------------------------------------
def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


BOOL_TEXT = {"type": "string", "pattern": "^(" + "|".join(_any_case(w) for w in BOOL_WORDS) + ")$"}


def value_schema(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON Schema of one value: accepts exactly what :func:`check_value` accepts (but ``checks``)."""
    kind = spec.get("type", "str")
    strict = spec.get("strict")
    if "json_schema" in spec:  # a value only the controller's own code judges (an expression, a list of steps)
        return _with_meta(spec["json_schema"], spec)
    if kind == "any_of":
        options = [value_schema(option) for option in spec["options"]]
        return _with_meta({"anyOf": options + ([{"type": "null"}] if spec.get("nullable") else [])}, spec)
    if kind in ("str", "path", "mode"):
        base: Dict[str, Any] = {"type": "string"}
        if kind == "path" and not spec.get("relative"):
            base["pattern"] = "^/"
        elif kind == "mode":
            base["pattern"] = MODE_RE.pattern
        elif spec.get("pattern"):
            base["pattern"] = spec["pattern"]
        if spec.get("reserved") or spec.get("refused"):
            base["not"] = {"enum": list(spec.get("reserved", ())) + list(spec.get("refused", {}))}
        alternatives = [base]
        if kind == "str" and not strict:
            alternatives.append({"type": "number"})
    elif kind == "int":
        alternatives = [{"type": "integer"}]
        if not strict:
            alternatives.append({"type": "string", "pattern": INT_TEXT})
    elif kind in ("float", "number"):
        alternatives = [{"type": "number"}]
    elif kind == "bool":
        alternatives = [{"type": "boolean"}] + ([] if strict else [BOOL_TEXT])
    elif kind == "list":
        items = spec.get("items") or ({"type": spec["elements"]} if spec.get("elements") else None)
        array: Dict[str, Any] = {"type": "array"}
        if items:
            array["items"] = value_schema(items)
        if spec.get("min_items"):
            array["minItems"] = spec["min_items"]
        if spec.get("unique"):
            array["uniqueItems"] = True
        alternatives = [array]
        if not spec.get("strict_list") and not strict:
            # only a string stands for a list of one (a number does not), judged as an item would be
            of_strings = items and items.get("type", "str") in ("str", "path")
            alternatives.append(value_schema(dict(items, strict=True)) if of_strings else {"type": "string"})
    elif kind == "object":
        obj = json_schema(spec)
        alternatives = [obj]
        if spec.get("free_form"):
            alternatives.append(value_schema(dict(spec["args"][spec["free_form"]], description="")))
        if spec.get("nullable"):
            alternatives.append({"type": "null"})
        return _with_meta(alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}, spec)
    elif kind in ("dict", "map"):
        obj: Dict[str, Any] = {"type": "object"}
        if spec.get("values"):
            obj["additionalProperties"] = value_schema(spec["values"])
        if spec.get("key_pattern"):
            obj["propertyNames"] = {"pattern": spec["key_pattern"]}
        if spec.get("reserved_keys"):
            obj.setdefault("propertyNames", {})["not"] = {"enum": list(spec["reserved_keys"])}
        alternatives = [obj]
    else:
        alternatives = [{}]
    for alt in alternatives:
        if alt.get("type") in ("integer", "number"):
            if "minimum" in spec:
                alt["minimum"] = spec["minimum"]
            if "exclusive_minimum" in spec:
                alt["exclusiveMinimum"] = spec["exclusive_minimum"]
            if "maximum" in spec:
                alt["maximum"] = spec["maximum"]
    if "choices" in spec:
        alternatives = [{"enum": list(spec["choices"])}]
    if spec.get("templated", True) and kind not in ("list", "dict", "object", "map", "raw"):
        alternatives.append(dict(TEMPLATED))
    if spec.get("nullable"):
        alternatives.append({"type": "null"})
    out: Dict[str, Any] = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    return _with_meta(out, spec)


def _with_meta(out: Dict[str, Any], spec: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(out)
    if spec.get("description"):
        out["description"] = spec["description"]
    if "default" in spec:
        out["default"] = spec["default"]
    return out


def json_schema(schema: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON Schema of a mapping's arguments (for editors' YAML support)."""
    props: Dict[str, Any] = {}
    for name, spec in schema.get("args", {}).items():
        prop = value_schema(spec)
        prop.setdefault("description", "")
        props[name] = prop
        for alias in spec.get("aliases", []):
            props[alias] = dict(prop, description=f"alias of {name}")
    for name, taker in schema.get("foreign_args", {}).items():
        props[name] = {"description": f"{taker}'s argument (decided when the step runs)"}
    required = [n for n, s in schema.get("args", {}).items() if s.get("required")]
    out: Dict[str, Any] = {
        "type": "object",
        "description": schema.get("description", ""),
        "properties": props,
        "additionalProperties": False,
    }
    names_of = {n: [n] + list(s.get("aliases", [])) for n, s in schema.get("args", {}).items()}

    def given(name: str) -> Dict[str, Any]:
        spellings = names_of.get(name, [name])
        return {"required": spellings} if len(spellings) == 1 else {"anyOf": [{"required": [n]} for n in spellings]}

    def literal(*names: str) -> Dict[str, Any]:
        return {"properties": {s: {"not": TEMPLATED} for n in names for s in names_of.get(n, [n])}}

    rules = [
        {"not": {"allOf": [given(a), given(b), literal(a, b)]}}
        for group in schema.get("mutually_exclusive", [])
        for i, a in enumerate(group)
        for b in group[i + 1 :]
    ]
    rules += [{"anyOf": [given(n) for n in group]} for group in schema.get("required_one_of", [])]
    rules += [given(n) for n, s in schema.get("args", {}).items() if s.get("required") and s.get("aliases")]
    rules += [
        {"not": {"required": [a, b]}}
        for spellings in names_of.values()
        for i, a in enumerate(spellings)
        for b in spellings[i + 1 :]
    ]
    if required:
        out["required"] = [n for n in required if not schema["args"][n].get("aliases")]
        if not out["required"]:
            del out["required"]
    if rules:
        out["allOf"] = rules
    return out


# --- reference rows -------------------------------------------------------------------------
def type_text(spec: Dict[str, Any]) -> str:
    """How the reference names a spec's type (``list of str``, ``number > 0``)."""
    kind = spec.get("type", "str")
    if kind == "any_of":
        return " or ".join(type_text(option) for option in spec["options"])
    if kind == "list" and (spec.get("elements") or spec.get("items")):
        inner = spec.get("elements") or type_text(spec["items"])
        kind = f"list of {inner}"
    elif kind == "map" and spec.get("values"):
        kind = f"map of {type_text(spec['values'])}"
    if "minimum" in spec:
        kind += f" >= {spec['minimum']}"
    if "exclusive_minimum" in spec:
        kind += f" > {spec['exclusive_minimum']}"
    if "maximum" in spec:
        kind += f" and <= {spec['maximum']}"
    return kind


def rows(schema: Dict[str, Any], prefix: str = "") -> List[Tuple[str, Dict[str, Any]]]:
    """(dotted name, spec) of every setting, nested ones after their parent (``ssh.cidrs``)."""
    out: List[Tuple[str, Dict[str, Any]]] = []
    for name, spec in schema.get("args", {}).items():
        dotted = f"{prefix}{name}"
        out.append((dotted, spec))
        if spec.get("type") == "object":
            out += rows(spec, dotted + ".")
        elif spec.get("type") == "list" and (spec.get("items") or {}).get("type") == "object":
            out += rows(spec["items"], dotted + "[].")
        elif spec.get("type") == "any_of":
            out += [
                row
                for option in spec["options"]
                if option.get("type") == "object"
                for row in rows(option, dotted + ".")
            ]
    return out


Check = Callable[[Any], Optional[str]]
