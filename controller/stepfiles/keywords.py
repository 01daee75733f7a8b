"""Step and check keywords, declared once.

Each keyword is a spec of the schema engine (:mod:`agent.schema`) plus ``on``: the kinds
of step that take it (``step`` a module step, ``block``, ``flush``) and ``expect``: how
a message names the type. The validator (``validate.py``) judges values with it, the
JSON Schema (``schema_export.py``) and the reference (docs/step-files.md) are generated
from it. A new keyword is one entry here (and its handling on the box, agent/runner.py).
"""

from __future__ import annotations

from typing import Any

from kiln.agent.schema import BOOL_WORDS, check_value
from kiln.agent.templating import ENV

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
JINJA_GLOBALS = frozenset(ENV.globals) | {"range", "dict", "lipsum", "cycler", "joiner", "namespace"}
RESERVED_NAMES = frozenset({"facts", "kiln", "item", "result", "kiln_failed_step"}) | JINJA_GLOBALS
EXPRESSION = {"$ref": "#/$defs/expression"}
STEPS = {"$ref": "#/$defs/steps"}
STEP, BLOCK, FLUSH = "step", "block", "flush"
#: where a check runs (its ``on:`` key): the build machine before cleaning, a fresh machine from the image, or both
CHECK_ON = ("both", "build", "image")
CHECK_ON_DEFAULT = "both"
CHECK_ON_DESCRIPTION = (
    "where the check runs: `build` only on the build machine (before it is cleaned), `image` only on a "
    "fresh machine launched from the new image (the test stage, `build.test_image`), `both` on each."
)
NAME = {"type": "str", "pattern": r"\S", "expect": "a non-empty string"}
VARIABLE = {
    "type": "str",
    "strict": True,
    "templated": False,
    "pattern": IDENTIFIER,
    "expect": "a variable name (letters, digits, _)",
    "message": "{key} needs {expect}, got {value!r}",
}
BOOLEAN = {"type": "bool", "strict": True, "templated": False, "expect": "true or false"}


def _keyword(on: tuple[str, ...], description: str, **spec: Any) -> dict[str, Any]:
    return dict(spec, on=on, description=description)


KEYWORDS: dict[str, dict[str, Any]] = {
    "name": _keyword(
        (STEP, BLOCK, FLUSH),
        "What the step does; shown in output. Default: `<module> <main argument>`. Handlers are notified by it.",
        **NAME,
    ),
    "when": _keyword(
        (STEP, BLOCK),
        "Run only when the expression holds (evaluated on the box, per loop item).",
        type="raw",
        json_schema=EXPRESSION,
    ),
    "loop": _keyword(
        (STEP,),
        "Run once per item: a list, or an expression giving one.",
        type="raw",
        json_schema={"anyOf": [{"type": "array"}, {"type": "string"}]},
    ),
    "loop_var": _keyword((STEP,), "The loop variable's name (default `item`).", **VARIABLE),
    "loop_control": _keyword(
        (STEP,),
        "How a loop runs: `loop_var` (the loop variable's name), `index_var` (a variable holding the item's "
        "index), `label` (what output shows per item), `extended` (`ansible_loop`), `pause` (seconds between items).",
        type="object",
        args={
            "loop_var": dict(VARIABLE, description="The loop variable's name."),
            "index_var": dict(VARIABLE, description="A variable holding the item's index (0-based)."),
            "label": {"type": "str", "description": "What output shows for each item."},
            "extended": {"type": "bool", "description": "Set `ansible_loop` (index, first, last, ...)."},
            "pause": {"type": "number", "minimum": 0, "description": "Seconds between items."},
        },
        key_noun="loop_control setting",
        expect="a mapping like {loop_var: pkg, label: '{{ pkg.name }}'}",
    ),
    **{
        f"with_{kind}": _keyword(
            (STEP,),
            description,
            type="raw",
            json_schema={"anyOf": [{"type": "array"}, {"type": "string"}, {"type": "object"}]},
        )
        for kind, description in (
            ("items", "Ansible's loop over a list (a list, or an expression giving one); same as `loop`."),
            ("list", "Ansible's loop over a list; same as `loop`."),
            ("dict", "Ansible's loop over a mapping: `item.key` and `item.value` per entry."),
            ("fileglob", "Loop over the role's files/ matching these patterns (expanded when compiling)."),
            (
                "first_found",
                "The first of these files that exists (include_vars: in vars/, include_tasks: in "
                "tasks/), names rendered with facts on the box.",
            ),
            (
                "subelements",
                "Ansible's loop over `[list, 'key', {skip_missing: true}]`: `item.0` each element (without `key`), "
                "`item.1` each item of its list under `key` (dotted for a deeper one).",
            ),
            ("flattened", "Ansible's loop over the items of these lists, flattened however deep."),
            ("community.general.flattened", "The same as `with_flattened` (its collection's name)."),
        )
    },
    "run_once": _keyword(
        (STEP, BLOCK),
        "Accepted and changes nothing: a bake has one host, so every step runs once.",
        **dict(BOOLEAN, templated=True, expect="true, false or a template giving one"),
    ),
    "become": _keyword(
        (STEP, BLOCK),
        "Run as another user (`become_user`); steps run as root already, so `become: true` alone changes nothing.",
        **BOOLEAN,
    ),
    "become_user": _keyword(
        (STEP, BLOCK),
        "With `become: true`: the user the step runs as (default root).",
        type="str",
        pattern=r"\S",
        expect="a user name",
    ),
    "vars": _keyword(
        (STEP, BLOCK),
        "Variables for this step (or block) only; they win over role and kiln.yaml variables.",
        type="raw",
        json_schema={"type": "object"},
    ),
    "environment": _keyword(
        (STEP, BLOCK),
        "Environment variables for the step's commands (a mapping of names to values).",
        type="raw",
        json_schema={"anyOf": [{"type": "object"}, {"type": "string"}]},
    ),
    "args": _keyword(
        (STEP,),
        "More arguments for the module (Ansible's spelling; merged with those under the module's key).",
        type="raw",
        json_schema={"type": "object"},
    ),
    "check_mode": _keyword(
        (STEP, BLOCK),
        "`true`: this step only reports what it would change, even in a normal run; "
        "`false`: it changes things even under --check.",
        **BOOLEAN,
    ),
    "listen": _keyword(
        (STEP,),
        "On a handler: more names `notify` may use to run it (a name or a list).",
        type="list",
        items={"type": "str", "strict": True, "templated": False},
        expect="a name or a list of names",
    ),
    "register": _keyword(
        (STEP,),
        "Keep the result (changed, failed, msg, rc, stdout, ...; `results` for loops) under this name.",
        reserved=sorted(RESERVED_NAMES),
        **VARIABLE,
    ),
    "changed_when": _keyword(
        (STEP,), "Decide `changed` yourself (`result` is the module's result).", type="raw", json_schema=EXPRESSION
    ),
    "failed_when": _keyword(
        (STEP,), "Decide `failed` yourself (`result` is the module's result).", type="raw", json_schema=EXPRESSION
    ),
    "ignore_errors": _keyword((STEP, BLOCK), "A failure is reported as ignored and the run goes on.", **BOOLEAN),
    "retries": _keyword(
        (STEP,),
        "Retry a failing step (or until `until` holds) this many times.",
        type="int",
        strict=True,
        minimum=0,
        expect="a whole number >= 0",
    ),
    "delay": _keyword(
        (STEP,),
        "Seconds between retries (default 5).",
        type="number",
        minimum=0,
        expect="a number of seconds >= 0",
    ),
    "until": _keyword(
        (STEP,),
        "Retry until the expression holds (3 retries unless `retries` says otherwise).",
        type="raw",
        json_schema=EXPRESSION,
    ),
    "timeout": _keyword(
        (STEP,),
        "Seconds the step may run (all its loop items and retries together; a handler, each time it "
        "runs). Past it the step fails, whatever it started is killed, and `ignore_errors`/`rescue` "
        "apply as to any failure. Default: kiln.yaml `build.step_timeout` (3600).",
        type="number",
        exclusive_minimum=0,
        templated=False,
        expect="a positive number of seconds",
    ),
    "notify": _keyword(
        (STEP, BLOCK),
        "Handlers to run (once, at the end or at `flush_handlers`) when this step changed. On a block: for each "
        "step inside that names none of its own (Ansible's inheritance).",
        type="list",
        items={"type": "str", "strict": True, "templated": False},
        expect="a handler name or a list of them",
    ),
    "no_log": _keyword(
        (STEP, BLOCK),
        'Redact this step\'s messages, diffs and output everywhere. A template (`"{{ secret_mode }}"`) is '
        "decided when compiling where it reads only variables the controller knows; else it redacts.",
        **dict(BOOLEAN, templated=True, expect="true, false or a template giving one"),
    ),
    "tags": _keyword(
        (STEP, BLOCK, FLUSH),
        "Select steps with `--tags` / `--skip-tags` (`always` runs unless skipped by name; "
        "`never` only when asked for). A block's tags apply to its steps.",
        type="list",
        items={"type": "str", "templated": False},
        expect="a name or a list of names",
    ),
    "idempotent": _keyword(
        (STEP,),
        "`false` exempts the step from the idempotence gate; needs a reason: "
        "`idempotent: false  # why` or `idempotent_reason`.",
        **BOOLEAN,
    ),
    "idempotent_reason": _keyword(
        (STEP,),
        "Why the step changes on every run.",
        type="str",
        strict=True,
        templated=False,
        pattern=r"\S",
        expect="a non-empty string",
    ),
    "block": _keyword(
        (BLOCK,),
        "Steps run together (with `rescue` and `always`); `tags`, `no_log`, `ignore_errors` apply to all of them, "
        "and its `when` is checked by each step inside (block, rescue, always) as it runs.",
        type="raw",
        json_schema={"allOf": [STEPS, {"minItems": 1}]},
    ),
    "rescue": _keyword(
        (BLOCK,),
        "Run when a step of the block fails (`kiln_failed_step` says which).",
        type="raw",
        json_schema={"anyOf": [STEPS, {"type": "null"}]},
    ),
    "always": _keyword(
        (BLOCK,), "Run after the block, failed or not.", type="raw", json_schema={"anyOf": [STEPS, {"type": "null"}]}
    ),
    "flush_handlers": _keyword(
        (FLUSH,),
        "`flush_handlers: true` runs the handlers notified so far, now.",
        type="raw",
        json_schema={"const": True},
    ),
}

#: the keys a check entry may carry beside its kind and attributes
CHECK_KEYWORDS: dict[str, dict[str, Any]] = {
    "name": {"type": "str", "templated": False, "description": "Shown in output.", "expect": "a string"},
    "on": {
        "type": "str",
        "strict": True,
        "templated": False,
        "choices": list(CHECK_ON),
        "default": CHECK_ON_DEFAULT,
        "description": CHECK_ON_DESCRIPTION,
        "expect": f"one of {', '.join(CHECK_ON)}",
    },
}


def keys_for(kind: str) -> tuple[str, ...]:
    return tuple(k for k, spec in KEYWORDS.items() if kind in spec["on"])


STEP_KEYS = keys_for(STEP)
BLOCK_KEYS = keys_for(BLOCK)
FLUSH_KEYS = keys_for(FLUSH)
CONTROL_KEYS = tuple(KEYWORDS)


def judge(key: str, value: Any, specs: dict[str, dict[str, Any]] = KEYWORDS) -> tuple[Any, str]:
    """(normalised value, "") or (value, the message naming what ``key`` must be)."""
    spec = specs[key]
    normal, errors = check_value(spec, value)
    if not errors:
        return normal, ""
    if value in spec.get("reserved", ()):
        return value, f"'{value}' is reserved; {key} under another name"
    message = spec.get("message", "{key} must be {expect}, got {value!r}").format(
        key=key, expect=spec["expect"], value=value
    )
    if spec.get("type") == "bool" and isinstance(value, str) and value.lower() in BOOL_WORDS:
        message += f"; write {'true' if value.lower() in ('yes', 'true', 'on') else 'false'} (a YAML boolean)"
    return value, message
