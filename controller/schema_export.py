"""Step files described from the modules' and checks' own schemas.

- :func:`json_schema`: a JSON Schema (draft 2020-12) of steps, handlers and verify
  files, for editors' YAML support (``invoke schema``). ``$defs`` holds
  ``steps_file``, ``handlers_file`` and ``verify_file``; :func:`file_schema` gives
  one of them as a standalone schema.
- :func:`reference_markdown`: ``docs/step-files.md``, the reference of every module
  and check. ``python -m kiln.controller.schema_export`` rewrites it; a test fails when
  the file is stale.
- :func:`config_schema` and :func:`config_markdown`: the same for kiln.yaml
  (``invoke schema --config``, ``docs/kiln-yaml.md``), from ``CONFIG_SCHEMA``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from kiln.agent.checks import discover as discover_checks
from kiln.agent.modules import discover as discover_modules
from kiln.agent.schema import json_schema as args_schema
from kiln.agent.schema import rows, type_text, value_schema
from kiln.controller.config import CONFIG_SCHEMA
from kiln.controller.stepfiles.keywords import (
    BLOCK_KEYS,
    CHECK_KEYWORDS,
    CHECK_ON,
    CHECK_ON_DEFAULT,
    CHECK_ON_DESCRIPTION,
    FLUSH_KEYS,
    KEYWORDS,
    STEP_KEYS,
)
from kiln.controller.stepfiles.validate import FACTS, KILN_ATTRS

DRAFT = "https://json-schema.org/draft/2020-12/schema"
DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "step-files.md"
CONFIG_DOC_PATH = DOC_PATH.with_name("kiln-yaml.md")

EXPRESSION = {
    "description": "A Jinja2 expression (with or without {{ }}), true/false, or a list (all must hold).",
    "anyOf": [{"type": "string"}, {"type": "boolean"}, {"type": "array", "items": {"$ref": "#/$defs/expression"}}],
}


def _module_args_schema(schema: dict[str, Any]) -> dict[str, Any]:
    out = args_schema(schema)
    if schema.get("free_form"):
        return {
            "description": out.get("description", ""),
            "anyOf": [out, {"type": "string", "description": f"shorthand for {schema['free_form']}"}],
        }
    return out


def _only_with(key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """A step with ``key`` takes only the keywords ``allowed`` beside it."""
    return {"if": {"required": [key]}, "then": {"propertyNames": {"enum": list(allowed)}}}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of steps, handlers and verify files (draft 2020-12)."""
    modules = discover_modules()
    checks = discover_checks()
    defs: dict[str, Any] = {"expression": EXPRESSION}
    step_props: dict[str, Any] = {k: value_schema(spec) for k, spec in KEYWORDS.items()}
    for name, module in modules.items():
        defs[f"module_{name}"] = _module_args_schema(module.SCHEMA)
        step_props[name] = {"$ref": f"#/$defs/module_{name}"}
    one_of = [{"required": [name]} for name in modules] + [{"required": ["block"]}, {"required": ["flush_handlers"]}]
    defs["step"] = {
        "type": "object",
        "description": "One step: exactly one module (or block, or flush_handlers) plus control keywords.",
        "properties": step_props,
        "additionalProperties": False,
        "oneOf": one_of,
        "allOf": [
            _only_with("block", BLOCK_KEYS),
            _only_with("flush_handlers", FLUSH_KEYS),
            {
                "if": {"not": {"anyOf": [{"required": ["block"]}, {"required": ["flush_handlers"]}]}},
                "then": {"propertyNames": {"enum": list(STEP_KEYS) + list(modules)}},
            },
        ],
    }
    defs["steps"] = {"type": "array", "items": {"$ref": "#/$defs/step"}}
    defs["steps_file"] = {"description": "steps.yml: the role's steps, in order.", "$ref": "#/$defs/steps"}
    defs["handlers_file"] = {
        "description": "handlers.yml: named steps run once, when notified.",
        "type": "array",
        "items": {"allOf": [{"$ref": "#/$defs/step"}, {"required": ["name"]}]},
    }
    check_entries = []
    for name, check in checks.items():
        schema = check.SCHEMA
        args = args_schema(schema)
        props = dict(args["properties"])
        free_form = schema.get("free_form")
        main: dict[str, Any] = {
            "anyOf": [
                {"type": "object", "properties": args["properties"], "additionalProperties": False},
                {"type": "null"},
            ]
        }
        if free_form:
            main["anyOf"].insert(0, props.get(free_form, {}))
            main["description"] = f"the check's {free_form}"
        props[name] = main
        props.update({key: value_schema(spec) for key, spec in CHECK_KEYWORDS.items()})
        check_entries.append(
            {
                "type": "object",
                "description": schema.get("description", ""),
                "required": [name],
                "properties": props,
                "additionalProperties": False,
            }
        )
        defs[f"check_{name}"] = check_entries[-1]
    defs["check"] = {"oneOf": [{"$ref": f"#/$defs/check_{name}"} for name in checks]}
    defs["verify_file"] = {
        "description": "verify.yml: checks run against the baked machine.",
        "type": "array",
        "items": {"$ref": "#/$defs/check"},
    }
    return {
        "$schema": DRAFT,
        "$id": "https://kiln.invalid/schemas/step-files.json",
        "title": "kiln step files",
        "description": "steps.yml, handlers.yml and verify.yml of a kiln role. Generated from the modules' "
        "and checks' argument schemas; $defs/steps_file, $defs/handlers_file and "
        "$defs/verify_file describe each file.",
        "anyOf": [{"$ref": "#/$defs/steps_file"}, {"$ref": "#/$defs/handlers_file"}, {"$ref": "#/$defs/verify_file"}],
        "$defs": defs,
    }


def file_schema(kind: str) -> dict[str, Any]:
    """A standalone schema for one kind of file: ``steps``, ``handlers`` or ``verify``."""
    full = json_schema()
    return {"$schema": DRAFT, "title": f"kiln {kind}.yml", "$ref": f"#/$defs/{kind}_file", "$defs": full["$defs"]}


# --- the reference --------------------------------------------------------------------------
def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _arg_table(schema: dict[str, Any]) -> list[str]:
    rows = ["| argument | type | required | default | choices | description |", "|---|---|---|---|---|---|"]
    free_form = schema.get("free_form")
    for name, spec in schema.get("args", {}).items():
        label = f"`{name}`"
        if spec.get("aliases"):
            label += " (" + ", ".join(f"`{a}`" for a in spec["aliases"]) + ")"
        if name == free_form:
            label += " *main*"
        kind = spec.get("type", "str")
        if kind == "list" and spec.get("elements"):
            kind = f"list of {spec['elements']}"
        default = f"`{_cell(spec['default'])}`" if "default" in spec else ""
        choices = ", ".join(f"`{_cell(c)}`" for c in spec.get("choices", []))
        rows.append(
            f"| {label} | {kind} | {'yes' if spec.get('required') else ''} | {default} | {choices} | "
            f"{_cell(spec.get('description', ''))} |"
        )
    return rows


def _rules(schema: dict[str, Any]) -> list[str]:
    out = []
    for group in schema.get("mutually_exclusive", []):
        out.append("- mutually exclusive: " + ", ".join(f"`{n}`" for n in group))
    for group in schema.get("required_one_of", []):
        out.append("- one of " + ", ".join(f"`{n}`" for n in group) + " is required")
    for key, value, needed in schema.get("required_if", []):
        out.append(f"- with `{key}: {value}`, " + ", ".join(f"`{n}`" for n in needed) + " required")
    return out


def _section(kind: str, name: str, schema: dict[str, Any]) -> list[str]:
    """A module's or check's anchor, heading, description, argument table and rules."""
    return [
        f'<a id="{kind}-{name.replace("_", "-")}"></a>',
        f"### `{name}`",
        "",
        schema.get("description", "").strip(),
        "",
        *_arg_table(schema),
        "",
        *_rules(schema),
    ]


def reference_markdown() -> str:
    """docs/step-files.md: every keyword, module and check, generated from their schemas."""
    modules = discover_modules()
    checks = discover_checks()
    out = [
        "# Step files reference",
        "",
        "<!-- Generated by controller/schema_export.py from the modules' and checks' schemas. Do not edit:",
        "     run `python -m kiln.controller.schema_export` (a test fails when this file is stale). -->",
        "",
        "A role is `playbooks/roles/<role>/` with `role.yml` (description, depends, defaults, vars, base),",
        "`steps.yml`, `handlers.yml`, `verify.yml`, `files/` and `templates/`. A step is Ansible's task shape:",
        "one module key plus control keywords.",
        "",
        "```yaml",
        "- name: Site config",
        '  template: {src: site.conf.j2, dest: /etc/nginx/sites-available/default, mode: "0644"}',
        "  notify: reload nginx",
        '  when: facts.os_family == "debian"',
        "```",
        "",
        "Files are YAML 1.2: `yes`/`no`/`on`/`off` are strings, so kiln asks you to quote them where a string",
        "argument is meant (YAML 1.1 and Ansible read them as booleans); file modes must be quoted strings",
        '(`mode: "0644"`; an unquoted `0644` or `644` is a number). `invoke validate` reports every problem',
        "with file:line:column before anything is launched.",
        "",
        "## Variables",
        "",
        "Precedence, lowest first: role `defaults` (dependencies first) < role `vars` < `kiln.yaml` `vars` <",
        "`--var k=v`. Also available: `facts.` (" + ", ".join(f"`{f}`" for f in FACTS) + "),",
        "`kiln.` (" + ", ".join(f"`{a}`" for a in KILN_ATTRS) + "), registered results, the loop variable",
        "inside its step, `kiln_failed_step` in `rescue`, and `result` in `changed_when`/`failed_when`/`until`.",
        "Verify checks may use variables and `kiln.role` (they are rendered before the bake).",
        "",
        "## Step keywords",
        "",
        "| keyword | description |",
        "|---|---|",
    ]
    for name, spec in KEYWORDS.items():
        out.append(f"| `{name}` | {_cell(spec['description'])} |")
    out += ["", "## Modules", ""]
    out.append(", ".join(f"[`{name}`](#module-{name.replace('_', '-')})" for name in modules))
    out.append("")
    for name, module in modules.items():
        schema = module.SCHEMA
        out += _section("module", name, schema)
        check_mode = schema.get("check_mode", "none")
        out.append(
            f"- check mode: {'yes' if check_mode == 'full' else check_mode if check_mode != 'none' else 'no'}"
            f" · diff: {'yes' if schema.get('diff') else 'no'}"
        )
        if schema.get("free_form"):
            out.append(f"- shorthand: `{name}: VALUE` sets `{schema['free_form']}`")
        out.append("")
        if schema.get("example"):
            out += ["```yaml", schema["example"].rstrip(), "```", ""]
    out += [
        "## Checks (verify.yml)",
        "",
        "A check names its kind as its key; the key's value is the check's main argument and the other",
        "keys are its attributes:",
        "",
        "```yaml",
        "- http: http://127.0.0.1/",
        "  status: 200",
        '  body: ["kiln web"]',
        "```",
        "",
        f"Every check may also say `on:` ({', '.join(f'`{v}`' for v in CHECK_ON)}; default `{CHECK_ON_DEFAULT}`): "
        f"{CHECK_ON_DESCRIPTION}",
        "",
    ]
    out.append(", ".join(f"[`{name}`](#check-{name.replace('_', '-')})" for name in checks))
    out.append("")
    for name, check in checks.items():
        schema = check.SCHEMA
        out += _section("check", name, schema)
        if schema.get("free_form"):
            out += [f"- main argument: `{schema['free_form']}` (`- {name}: VALUE`)", ""]
        if schema.get("example"):
            out += ["```yaml", schema["example"].rstrip(), "```", ""]
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


# --- kiln.yaml --------------------------------------------------------------------------------
def config_schema() -> dict[str, Any]:
    """The JSON Schema of playbooks/kiln.yaml (draft 2020-12), from CONFIG_SCHEMA."""
    return {
        "$schema": DRAFT,
        "$id": "https://kiln.invalid/schemas/kiln-yaml.json",
        "title": "kiln.yaml",
        **value_schema({"type": "object", "nullable": True, **CONFIG_SCHEMA}),
    }


def config_markdown() -> str:
    """docs/kiln-yaml.md: every setting of kiln.yaml, generated from CONFIG_SCHEMA."""
    out = [
        "# kiln.yaml reference",
        "",
        "<!-- Generated by controller/schema_export.py from controller/config.py's CONFIG_SCHEMA. Do not edit:",
        "     run `python -m kiln.controller.schema_export` (a test fails when this file is stale). -->",
        "",
        "`playbooks/kiln.yaml` holds the providers' settings, retention, build settings and global variables.",
        "A missing file means every default. `invoke validate` reports every problem with file:line:column;",
        "`invoke schema --config` writes its JSON Schema for editors. [aws.md](aws.md) explains the",
        "`providers.aws` settings; checks beyond a value's type and range (e.g. `ssh.cidrs` that together",
        "cover the whole internet, encrypted AMIs shared without customer managed keys) are kiln's own:",
        "the JSON Schema cannot express them.",
        "",
        "| setting | type | default | choices | description |",
        "|---|---|---|---|---|",
    ]
    for name, spec in rows(CONFIG_SCHEMA):
        default = f"`{_cell(spec['default'])}`" if "default" in spec else ""
        choices = ", ".join(f"`{_cell(c)}`" for c in spec.get("choices", []))
        kind = spec.get("type", "str")
        shown = (
            f"{type_text(spec)}{' or ' + type_text(spec['args'][spec['free_form']]) if spec.get('free_form') else ''}"
        )
        out.append(
            f"| `{name}` | {shown if kind != 'dict' else 'mapping'} | {default} | {choices} | "
            f"{_cell(spec.get('description', ''))} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the two generated references (``--help``: where); an option it does not know is refused, not
    taken for a file name."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m kiln.controller.schema_export",
        description="Write docs/step-files.md and docs/kiln-yaml.md from the schemas they document.",
    )
    parser.add_argument("steps_doc", nargs="?", type=Path, default=DOC_PATH, help=f"default: {DOC_PATH}")
    parser.add_argument("config_doc", nargs="?", type=Path, default=CONFIG_DOC_PATH, help=f"default: {CONFIG_DOC_PATH}")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for target, text in ((args.steps_doc, reference_markdown()), (args.config_doc, config_markdown())):
        target.write_text(text)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
