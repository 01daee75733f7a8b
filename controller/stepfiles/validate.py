"""Validate steps, handlers and verify checks; turn them into bundle entries.

Validation runs in two phases so one pass reports every problem:

1. :class:`StepCompiler` / :func:`compile_checks` walk each file's data, check the
   shape (one module a step, known keywords, argument schemas, YAML traps) and
   build the bundle entries, while *collecting* what can only be judged once every
   role of the chain is read: expressions and templated strings (undefined
   variables need every ``register`` and variable), ``notify`` names (handlers may
   live in a dependency), template files (with the loop variables of the steps
   that use them).
2. :func:`check_references` judges what was collected.

Every problem becomes a :class:`~controller.model.Diagnostic` at the file:line:column
of the key or value at fault.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import jinja2
import jinja2.meta
from jinja2 import nodes

from kiln.agent import schema as argschema
from kiln.agent.schema import Code
from kiln.agent.templating import (
    ENV,
    WHOLE_EXPRESSION,
    TemplateError,
    parsing_environment,
    template_options,
    template_path,
    value_environment,
)
from kiln.controller.model import Diagnostic
from kiln.controller.stepfiles import ansible
from kiln.controller.stepfiles.ansible import REFUSED_KEYWORDS
from kiln.controller.stepfiles.keywords import (
    BLOCK_KEYS,
    CHECK_KEYWORDS,
    CHECK_ON,
    CHECK_ON_DEFAULT,
    CONTROL_KEYS,
    FLUSH_KEYS,
    JINJA_GLOBALS,
    KEYWORDS,
    RESERVED_NAMES,
    STEP_KEYS,
    judge,
)
from kiln.controller.stepfiles.loader import PLAIN, Document, RoleTree, display_path, kind_of, load_yaml
from kiln.controller.stepfiles.splitter import RAW, SplitError, parse_kv

FACTS = (
    "os_family",
    "distribution",
    "distribution_version",
    "distribution_codename",
    "arch",
    "cpus",
    "memory_mb",
    "hostname",
    "pkg_mgr",
    "init",
    "python_version",
)
KILN_ATTRS = ("role", "version", "build_id")
BUILTIN_NAMES = (
    frozenset({"facts", "kiln", "result"})
    | JINJA_GLOBALS
    | frozenset(
        {
            "ansible_facts",
            "omit",
            "role_path",
            "role_name",
            "inventory_hostname",
            "inventory_hostname_short",
            "lookup",
            "query",
            "q",
            "playbook_dir",
            "group_names",
            "hostvars",
            "groups",
            "ansible_play_hosts",
            "now",
            "ansible_loop",
            "ansible_loop_var",
            "ansible_index_var",
        }
    )
)
YAML11_BOOLS = ("yes", "no", "on", "off", "y", "n")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

EXPRESSION_KEYS = ("when", "changed_when", "failed_when", "until")
__all__ = ["BLOCK_KEYS", "CHECK_ON", "CHECK_ON_DEFAULT", "CONTROL_KEYS", "FLUSH_KEYS", "RESERVED_NAMES", "STEP_KEYS"]
HINTS = {
    "loop_with": "use 'loop'",
    "sudo": "write 'become: true' (steps run as root already)",
    "action": "write the module as the step's key",
    "with_nested": "use 'loop' with the product filter: loop: \"{{ a | product(b) | list }}\"",
    "with_together": "use 'loop' with the zip filter: loop: \"{{ a | zip(b) | list }}\"",
    "with_subelements": "use 'loop' with the subelements filter",
    "with_sequence": "use 'loop' with range(): loop: \"{{ range(1, 5) | list }}\"",
    "with_indexed_items": "use 'loop' with loop_control: {index_var: index}",
    "with_flattened": "use 'loop' with the flatten filter",
    **{key: f"kiln cannot honour it: {why}" for key, why in REFUSED_KEYWORDS.items()},
}
RESET_CONNECTION = (
    "reset_connection: nothing to reset (kiln runs every step as root in one agent process; a become_user step "
    "reads its user's groups afresh, so a group just given applies)"
)
NOTIFY_ON_INCLUDE = (
    "'notify' cannot be used with {kind} (Ansible refuses it too): put it on the included steps, "
    "in apply, or use {other}"
)
# meta/main.yml dependencies: the keys a listing may have (the rest are role parameters) and those its block takes
DEPENDENCY_KEYS = ("role", "name", "src", "version", "scm", "tags", "when", "vars")
DEPENDENCY_SETTINGS = ("when", "vars", "tags")
# include_role/import_role: their settings, the files they may read instead of main.yml, the task keys they take
ROLE_SETTINGS = (
    "name",
    "tasks_from",
    "vars_from",
    "defaults_from",
    "handlers_from",
    "public",
    "apply",
    "allow_duplicates",
    "rolespec_validate",
)
ROLE_FILES = {"tasks_from": "tasks", "vars_from": "vars", "defaults_from": "defaults", "handlers_from": "handlers"}
ROLE_STEP_KEYS = (
    "name",
    "when",
    "tags",
    "vars",
    "become",
    "become_user",
    "environment",
    "no_log",
    "ignore_errors",
    "check_mode",
    "loop",
    "loop_control",
    "with_items",
    "with_list",
    "with_dict",
)
# the `src` of these modules names a file in the role's files/ or templates/
SRC_DIRS = {"copy": "files", "unarchive": "files", "template": "templates"}


def did_you_mean(word: Any, candidates: Any) -> str:
    return argschema.did_you_mean(str(word), [str(c) for c in candidates])


def is_templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


@dataclass
class Ref:
    """A string to check once every name is known: an expression or a templated value."""

    doc: Document
    path: tuple[Any, ...]
    text: str
    template: bool  # True: a templated value ("{{ x }}/y"); False: a bare expression (when: x == 1)
    extra: frozenset[str] = frozenset()
    # the step runs only where these are undefined (its when says `x is not defined`): see check_references
    fallback_for: frozenset[str] = frozenset()
    role_variable: bool = False  # a variable's value (defaults/, vars/, role.yml, kiln.yaml): rendered where it is read


@dataclass
class TemplateUse:
    role: str
    src: str
    extra: frozenset[str]


@dataclass
class Collector:
    """Everything one compile pass found: diagnostics and the references to judge at the end."""

    diagnostics: list[Diagnostic] = field(default_factory=list)
    refs: list[Ref] = field(default_factory=list)
    notifies: list[tuple[Document, tuple[Any, ...], str]] = field(default_factory=list)
    registers: set[str] = field(default_factory=set)
    handlers: dict[str, str] = field(default_factory=dict)  # name -> "file:line" of its definition
    handler_roles: dict[str, str] = field(default_factory=dict)  # handler name -> the role defining it last
    template_uses: list[TemplateUse] = field(default_factory=list)
    templated_src: dict[str, set[str]] = field(default_factory=dict)  # role -> names a templated src may use
    vars_files: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> {vars/ file: its variables}
    # (step, where, path, ignore_errors or no_log): a flag written as a template, decided when compiling
    templated_flags: list[tuple[dict[str, Any], Document, tuple[Any, ...], str]] = field(default_factory=list)
    no_log_names: set[str] = field(default_factory=set)
    maybe_secret: list[tuple[dict[str, Any], set[str]]] = field(default_factory=list)  # (step, names) to decide
    check_templates: list[tuple[dict[str, Any], Document, tuple[Any, ...], str]] = field(default_factory=list)
    index: int = 0
    roles: RoleFinder | None = None  # the roles include_role/import_role may name (compile.py gives it)
    role_uses: list[RoleUse] = field(default_factory=list)
    params: set[str] = field(default_factory=set)  # role parameters given to dependencies: names their tasks read
    loop_vars: set[str] = field(default_factory=set)  # each loop variable (loop_var, index_var): check_references

    def add(self, diagnostic: Diagnostic) -> None:
        self.diagnostics.append(diagnostic)


class RoleFinder(Protocol):
    """Finds a role of playbooks/roles/ by the name a task gives it (loaded once, shared with the chain)."""

    def find(self, name: str) -> Any:
        """The role's source (name, dir, tree, steps_doc, depends, vars_files), or None."""

    def names(self) -> list[str]: ...

    def ran(self, name: str) -> bool:
        """Whether the role's main tasks already run in this bake (in the chain, or as an included role's
        dependency)."""

    def mark_ran(self, name: str) -> None: ...


@dataclass(frozen=True)
class RoleUse:
    """A role that include_role/import_role brings in, and the files it reads instead of the main.yml ones."""

    name: str  # its folder in roles/
    doc: Document
    path: tuple[Any, ...]
    vars_from: str = ""  # vars/<file>, relative to vars/
    defaults_from: str = ""
    handlers_from: str = ""
    main: bool = True  # its tasks/main.yml (or steps.yml) ran: its verify.yml applies
    kind: str = "dependency"  # or include_role, import_role
    public: bool | None = None  # include_role/import_role's public, as written
    by: str = ""  # the role whose task includes it, or that depends on it


@dataclass(frozen=True)
class StepContext:
    tags: tuple[str, ...] = ()
    extra: frozenset[str] = frozenset()
    no_log: bool | None = None
    ignore_errors: bool | None = None
    handler: bool = False
    become: bool = False


def _primary(schema: dict[str, Any], args: dict[str, Any]) -> str:
    """The argument that names what a step or check is about, for default names."""
    order = [schema.get("free_form"), "name", "path", "dest", "url", "key", "user", "repo"]
    order += [n for n, s in schema.get("args", {}).items() if s.get("required")]
    for key in order:
        if key and key in args and isinstance(args[key], (str, int, float, list)):
            value = args[key]
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            return text if len(text) <= 60 else text[:57] + "..."
    return ""


class StepCompiler:
    """Validate and compile one role's steps or handlers file."""

    def __init__(
        self,
        collector: Collector,
        modules: Mapping[str, ModuleType],
        role: str,
        role_dir: Path,
        doc: Document,
        tree: RoleTree | None = None,
        stack: tuple[str, ...] = (),
    ) -> None:
        self.c = collector
        self.modules = modules
        self.role = role
        self.role_dir = role_dir
        self.doc = doc
        self.tree = tree
        self.stack = stack

    def error(self, path: tuple[Any, ...], message: str, *, key: bool = False) -> None:
        self.c.add(self.doc.diag(path, message, key=key))

    # --- lists ---------------------------------------------------------------
    def compile_file(self, handlers: bool = False) -> list[dict[str, Any]]:
        data = self.doc.data
        what = "handlers" if handlers else "steps"
        if data is None:
            return []
        if not isinstance(data, list):
            self.error((), f"a {what} file is a list of steps (each starting with '- '), got {kind_of(data)}")
            return []
        return self.compile_list(data, (), StepContext(handler=handlers))

    def compile_list(self, data: Any, path: tuple[Any, ...], ctx: StepContext) -> list[dict[str, Any]]:
        out = []
        for index, item in enumerate(data):
            step = self.compile_step(item, path + (index,), ctx)
            if step is None:
                continue
            out.append(step)
            if ctx.handler and not path:
                self._handler_name(item, path + (index,), step)
        return out

    def _handler_name(self, data: dict[str, Any], path: tuple[Any, ...], step: dict[str, Any]) -> None:
        if "name" not in data:
            self.error(path, "a handler needs a name: 'notify' refers to it")
            return
        name = step["name"]
        first = self.c.handlers.get(name)
        if first and self.c.handler_roles.get(name, self.role) == self.role:
            self.error(path + ("name",), f"duplicate handler '{name}' (first defined at {first})")
        elif name:  # another role's handler of this name: the one loaded last runs, as in Ansible (compile.py)
            self.c.handlers[name] = step["source"]
            self.c.handler_roles[name] = self.role
        for topic in step.get("listen", []):
            self.c.handlers.setdefault(topic, step["source"])

    # --- one step ------------------------------------------------------------
    def compile_step(self, data: Any, path: tuple[Any, ...], ctx: StepContext) -> dict[str, Any] | None:
        if not isinstance(data, dict):
            hint = " (did you forget 'module: arguments'?)" if isinstance(data, str) else ""
            self.error(path, f"a step must be a mapping of keywords and one module, got {kind_of(data)}{hint}")
            return None
        if not data:
            self.error(path, "empty step: a step needs one module (or block)")
            return None
        self.c.index += 1
        index = self.c.index
        line = self.doc.value_pos(path)[0]
        step: dict[str, Any] = {
            "index": index,
            "name": "",
            "module": "",
            "args": {},
            "source": f"{self.doc.display}:{line}",
            "role": self.role,
        }

        module_keys = [
            k
            for k in data
            if k not in CONTROL_KEYS and (ansible.resolve(k, self.modules) or ansible.is_controller_module(k))
        ]
        unknown = [
            k for k in data if k not in module_keys and k not in CONTROL_KEYS and k not in ansible.IGNORED_KEYWORDS
        ]
        for key in unknown:
            self.error(path + (key,), self._unknown_message(key, bool(module_keys)), key=True)

        if any(k.startswith("with_") for k in unknown):  # reported above; spare the 'item' that goes with it
            ctx = StepContext(ctx.tags, ctx.extra | {"item"}, ctx.no_log, ctx.ignore_errors, ctx.handler)
        if "block" in data:
            block = self._block(data, path, ctx, step, module_keys)
            check_per_task(block)  # a block's when is each of its tasks' (block, rescue, always), as in Ansible
            return block
        for key in ("rescue", "always"):
            if key in data:
                self.error(path + (key,), f"'{key}' belongs to a block: add 'block:' to this step", key=True)
        if "flush_handlers" in data:
            return self._flush(data, path, ctx, step, module_keys)

        if len(module_keys) > 1:
            self.error(
                path + (module_keys[1],),
                f"two modules in one step: '{module_keys[0]}' and '{module_keys[1]}' (one module a step)",
                key=True,
            )
        if not module_keys:
            if not unknown:
                self.error(path, "this step has no module (one module key a step, e.g. command: or file:)")
            elif isinstance(data.get("register"), str):  # its unknown module is the one problem, not its uses
                self.c.registers.add(data["register"])
            return None
        key = module_keys[0]
        special = ansible.is_controller_module(key)
        if special:
            return self._controller_module(special, key, data, path, ctx, step)
        mapping = ansible.resolve(key, self.modules)
        module = mapping.module
        step["module"] = module
        extra = ctx.extra | self._keywords(data, path, ctx, step)
        defined, fallback_for = definedness_guards(data.get("when"))
        extra |= defined  # the arguments are rendered only when the when holds
        first_ref = len(self.c.refs)
        given = self._given(mapping, data, path + (key,))
        if mapping.ansible.split(".")[-1] in ansible.OTHER_OS:
            self._templated(given, path + (key,), extra)
            step["args"] = {
                "msg": f"'{key}' is {ansible.OTHER_OS[key.split('.')[-1]]}: kiln has no such module "
                f"on this system ({step['source']})"
            }
        elif module in self.modules:
            self._args(module, given, path + (key,), step, extra, mapping)
        else:  # mapped, but no agent module runs it yet: refused here, never found out on a launched machine
            self.error(
                path + (key,),
                f"kiln does not implement '{key}' yet (ansible.NOT_YET): do it with command/shell, or leave the task "
                "out",
                key=True,
            )
            return None
        for ref in self.c.refs[first_ref:]:
            ref.fallback_for = fallback_for
        if module == "set_fact" and isinstance(step["args"].get("facts"), dict):
            facts = step["args"]["facts"]
            self.c.registers.update(k for k in facts if not is_templated(k))
            if any(is_templated(k) for k in facts):  # "{{ item.key }}": the names are rendered on the box too
                step["args"]["facts"] = "{{ " + as_expression(facts) + " }}"
        if module in ("service_facts", "package_facts"):
            self.c.registers.add("services" if module == "service_facts" else "packages")
        if module == "getent" and isinstance(step["args"].get("database"), str):  # its facts: getent_<database>
            self.c.registers.add(f"getent_{step['args']['database']}")
        if not step["name"]:
            schema = self.modules[module].SCHEMA if module in self.modules else {}
            step["name"] = f"{key} {_primary(schema, step['args'])}".strip()
        return step

    def _given(self, mapping: ansible.Mapping, data: dict[str, Any], path: tuple[Any, ...]) -> Any:
        """The module's arguments as kiln names them: key=value strings split, ``args:`` merged, names mapped."""
        given = data[mapping.ansible]
        schema = self.modules[mapping.module].SCHEMA if mapping.module in self.modules else {}
        specs = schema.get("args", {})
        if isinstance(given, str) and (not schema.get("free_form") or "=" in given):
            # only a command's free form keeps its words as written (debug: msg="a b" is key=value)
            free_form = schema.get("free_form", "") if mapping.free_form else ""
            if free_form or re.match(r"^\s*[A-Za-z_][A-Za-z0-9_-]*=", given):
                try:
                    parsed = _free_form_arguments(given, free_form) if free_form else ansible.parse_key_values(given)
                except (ansible.KeyValueError, SplitError) as exc:
                    self.error(path, f"cannot split the key=value arguments: {exc}" if free_form else str(exc))
                    return {}
                given = {
                    k: ansible.coerce(specs.get(mapping.renames.get(k, k)), v) if k != free_form else v
                    for k, v in parsed.items()
                }
                if free_form and list(given) == [free_form]:
                    given = given[free_form]
        if "args" in data:
            extra = data["args"]
            if not isinstance(extra, dict):
                self.error(path[:-1] + ("args",), f"args must be a mapping of arguments, got {kind_of(extra)}")
            else:
                base = (
                    {schema["free_form"]: given}
                    if schema.get("free_form") and isinstance(given, str)
                    else (given if isinstance(given, dict) else {})
                )
                given = {**extra, **base}
        if isinstance(given, dict):
            renamed = {}
            for key, value in given.items():
                if key in mapping.ignored:
                    continue
                if key == "mode" and isinstance(value, int) and path + (key,) in self.doc.octal:
                    value = f"0{value:o}"  # Ansible's `mode: 0644` (YAML 1.1 octal), as kiln spells it
                renamed[mapping.renames.get(key, key)] = value
            given = renamed
            if mapping.module in ("package", "apt") and "name" not in given and "update_cache" in given:
                given["name"] = []  # Ansible's update-only apt: kiln refreshes the index with the install
            if mapping.wrap and not (
                set(given) <= {mapping.wrap, *mapping.keep} and isinstance(given.get(mapping.wrap), dict)
            ):
                given = {
                    **{k: v for k, v in given.items() if k in mapping.keep},
                    mapping.wrap: {k: v for k, v in given.items() if k not in mapping.keep},
                }
        return given

    # --- what the controller compiles itself: include/import_tasks, include_vars, meta ---------------
    def _controller_module(
        self, kind: str, key: str, data: dict[str, Any], path: tuple[Any, ...], ctx: StepContext, step: dict[str, Any]
    ) -> dict[str, Any] | None:
        if kind == "meta":
            return self._meta(data, path + (key,), ctx, step)
        if kind in ("include_role", "import_role"):
            return self._include_role(kind, key, data, path, ctx, step)
        if kind == "include_vars":
            return self._include_vars(key, data, path, ctx, step)
        return self._include_tasks(kind, key, data, path, ctx, step)

    def _meta(
        self, data: dict[str, Any], path: tuple[Any, ...], ctx: StepContext, step: dict[str, Any]
    ) -> dict[str, Any] | None:
        value = data[path[-1]]
        if value == "flush_handlers":
            flush = {k: v for k, v in data.items() if k != path[-1]}
            flush["flush_handlers"] = True
            return self._flush(flush, path[:-1], ctx, step, [])
        if value == "noop":
            return None
        if value == "reset_connection":
            return self._reset_connection(data, path[:-1], ctx, step)
        self.error(
            path,
            f"meta: {value!r} is not supported (kiln knows meta: flush_handlers and reset_connection; end_play and "
            "end_host: put the rest under a when instead)",
        )
        return None

    def _reset_connection(
        self, data: dict[str, Any], path: tuple[Any, ...], ctx: StepContext, step: dict[str, Any]
    ) -> dict[str, Any]:
        """``meta: reset_connection`` has nothing to reset: Ansible logs in again so that the login user's new groups
        apply to later tasks; kiln's agent runs every step as root in one process, and a ``become_user`` step starts
        its commands with runuser, which reads that user's groups afresh each time. The step says so in the run."""
        self._name(data, path, step)
        step["name"] = step["name"] or "meta: reset_connection"
        step["module"] = "debug"
        step["args"] = {"msg": RESET_CONNECTION}
        if "when" in data:
            step["when"] = self._condition(data["when"], path + ("when",), ctx.extra)
        tags = self._tags(data, path, ctx)
        if tags:
            step["tags"] = tags
        return step

    def _task_file(self, name: str, where: tuple[Any, ...]) -> Document | None:
        rel = "tasks/" + name
        if self.tree is None or rel not in self.tree.files:
            present = sorted(self.tree.under("tasks")) if self.tree else []
            self.error(where, f"'{name}' not found in the role's tasks/{did_you_mean(name, present)}")
            return None
        if f"{self.role}:{rel}" in self.stack:
            self.error(where, f"'{name}' includes itself ({' -> '.join(self.stack + (f'{self.role}:{rel}',))})")
            return None
        try:
            return load_yaml(self.tree.files[rel], self.tree.shown(rel), yaml11=True)
        except Exception as exc:  # noqa: BLE001 - InvalidInput: its diagnostics are the problems
            self.c.diagnostics.extend(getattr(exc, "diagnostics", []))
            return None

    def _include_tasks(
        self, kind: str, key: str, data: dict[str, Any], path: tuple[Any, ...], ctx: StepContext, step: dict[str, Any]
    ) -> dict[str, Any] | None:
        """A block of the included file's steps (``when`` carried); a templated name: one block per candidate
        file of tasks/, each selected on the box by the name rendered there. A loop runs the block once per item on
        the box (:meth:`_include_loop`); ``apply`` (in the settings or under ``args``) holds for the included steps."""
        value = data[key]
        where = path + (key,)
        settings: dict[str, Any] = dict(data["args"]) if isinstance(data.get("args"), dict) else {}
        if isinstance(value, dict):
            for name in value:
                if name not in ansible.INCLUDE_KEYWORDS:
                    self.error(where + (name,), f"unknown {kind} setting '{name}'", key=True)
            settings.update(value)
            value, where = value.get("file"), where + ("file",)
        if not isinstance(value, str) or not value.strip():
            self.error(where, f"{kind} needs the file to include (a name in the role's tasks/), got {kind_of(value)}")
            return None
        value = in_role_folder(value, "tasks")
        if "notify" in data and kind == "include_tasks":
            self.error(path + ("notify",), NOTIFY_ON_INCLUDE.format(kind=kind, other="import_tasks"), key=True)
        loops = [k for k in data if k == "loop" or (k.startswith("with_") and k in KEYWORDS)]
        if loops and kind == "import_tasks":
            self.error(
                path + (loops[0],),
                "import_tasks cannot loop (Ansible refuses it too): use include_tasks to run a file once per item",
                key=True,
            )
            return None
        apply_at = path + ("args", "apply") if "apply" in (data.get("args") or {}) else where[:-1] + ("apply",)
        if "apply" in settings and kind != "include_tasks":
            self.error(
                apply_at, f"apply is for include_tasks ({kind}'s keywords hold for every task already)", key=True
            )
        apply = self._apply(settings.get("apply"), apply_at) if kind == "include_tasks" else {}
        block = _with_applied(
            {k: v for k, v in data.items() if k in BLOCK_KEYS and k not in ("block", "rescue", "always")}, apply
        )
        loop_var, index_var = (self._loop_var(data, path), _index_var(data)) if loops else ("", "")
        loop_names = frozenset(n for n in (loop_var, index_var) if n)
        self.c.loop_vars.update(loop_names)
        param_names = frozenset(block["vars"]) if isinstance(block.get("vars"), dict) else frozenset()
        own_tags = self._tags(data, path, StepContext()) if kind == "import_tasks" else []
        inner_tags = tuple(dict.fromkeys([*ctx.tags, *own_tags, *self._tags(apply, apply_at, StepContext())]))
        guards = definedness_guards(data.get("when"))[0]  # the file is included only when the when holds
        inner = StepContext(
            inner_tags, ctx.extra | loop_names | param_names | guards, ctx.no_log, ctx.ignore_errors, ctx.handler
        )
        if is_templated(value):
            # a file the name could render to that is on the include chain is no real choice (it would include
            # itself forever): nginxinc.nginx's opensource/install-oss.yml includes opensource/install-<os>.yml
            names = sorted(
                n
                for n in (self.tree.under("tasks") if self.tree else {})
                if fnmatch.fnmatch(n, ansible.glob_of(value)) and f"{self.role}:tasks/{n}" not in self.stack
            )
            if not names:
                self.error(where, f"no file in the role's tasks/ matches '{value}'")
                return None
            self._templated(value, where, ctx.extra | loop_names | param_names)
            chosen = ansible.template_to_expression(value)
            options = []
            for name in names:
                options.append(
                    {
                        "index": self._next(),
                        "name": f"{kind} {name}",
                        "module": "block",
                        "source": f"{self.doc.display}:{self.doc.value_pos(path)[0]}",
                        "role": self.role,
                        "when": f"({chosen}) == {name!r}",
                        "block": self._included(name, where, inner),
                        "rescue": [],
                        "always": [],
                    }
                )
            inner_steps = options
        else:
            inner_steps = self._included(value, where, inner)
        outer = StepContext(ctx.tags, ctx.extra | loop_names, ctx.no_log, ctx.ignore_errors, ctx.handler)
        compiled = self._block(block, path, outer, step, [])
        compiled["block"] = inner_steps
        inherit_keywords(compiled)
        notify_inside(compiled)
        if kind == "import_tasks":
            check_per_task(compiled)
        if not block.get("name"):
            compiled["name"] = f"{kind} {value}"
        if loops:
            self._include_loop(data, path, loops[0], ctx, compiled, loop_var, index_var)
        return compiled

    def _include_loop(
        self,
        data: dict[str, Any],
        path: tuple[Any, ...],
        loop_key: str,
        ctx: StepContext,
        compiled: dict[str, Any],
        loop_var: str,
        index_var: str,
    ) -> None:
        """The include's block runs once per item, the items given on the box when it is reached (a registered
        result, a set_fact value, facts: what Ansible loops an include over), the block's ``when`` checked per
        item, its steps seeing the item as ``loop_var`` (and its position as ``index_var``)."""
        secret = may_hide(data.get("no_log", ctx.no_log))
        guarded = ctx.extra | definedness_guards(data.get("when"))[0]  # as a task's loop (see _keywords)
        compiled["loop"] = self._ansible_loop(loop_key, data[loop_key], path + (loop_key,), guarded, secret)
        control = {"loop_var": loop_var}
        if index_var:
            control["index_var"] = index_var
        label = data["loop_control"].get("label") if isinstance(data.get("loop_control"), dict) else None
        if label is not None:
            control["label"] = label
            if is_templated(label):
                names = ctx.extra | {loop_var, index_var} - {""}
                self.c.refs.append(Ref(self.doc, path + ("loop_control", "label"), label, True, frozenset(names)))
        compiled["loop_control"] = control
        if secret:  # the items name nothing in what the box reports
            compiled["no_log"] = True

    def _included(self, name: str, where: tuple[Any, ...], ctx: StepContext) -> list[dict[str, Any]]:
        doc = self._task_file(name, where)
        if doc is None or doc.data is None:
            return []
        inner = StepCompiler(
            self.c, self.modules, self.role, self.role_dir, doc, self.tree, self.stack + (f"{self.role}:tasks/{name}",)
        )
        if not isinstance(doc.data, list):
            inner.error((), f"a tasks file is a list of steps (each starting with '- '), got {kind_of(doc.data)}")
            return []
        return inner.compile_list(doc.data, (), ctx)

    # --- include_role / import_role ---------------------------------------------------------------
    def _include_role(
        self, kind: str, key: str, data: dict[str, Any], path: tuple[Any, ...], ctx: StepContext, step: dict[str, Any]
    ) -> dict[str, Any] | None:
        """A block of the named role's tasks (``tasks_from`` or main), the role found in playbooks/roles/ like
        a dependency; its defaults, vars and handlers join the bake's (compile.py). A loop runs the block once per
        item on the box (:meth:`_include_loop`)."""
        where = path + (key,)
        settings = self._role_settings(kind, data[key], where)
        if settings is None:
            return None
        at = (lambda name: where + (name,)) if isinstance(data[key], dict) else (lambda name: where)
        source = self._named_role(kind, settings.get("name"), at("name"))
        if source is None:
            return None
        for other in data:
            if other == "notify" and kind == "import_role":
                continue  # each imported task's, as an import_tasks' notify
            if other == "notify":
                self.error(path + (other,), NOTIFY_ON_INCLUDE.format(kind=kind, other="import_role"), key=True)
            elif other != key and other not in ROLE_STEP_KEYS and other not in ansible.IGNORED_KEYWORDS:
                if other not in CONTROL_KEYS and other not in HINTS:
                    continue  # reported as unknown already
                self.error(path + (other,), f"'{other}' cannot be used with {kind}", key=True)
        loops = [k for k in data if k == "loop" or (k.startswith("with_") and k in KEYWORDS)]
        if loops and kind == "import_role":
            self.error(
                path + (loops[0],),
                "import_role cannot loop (Ansible refuses it too): use include_role to run a role once per item",
                key=True,
            )
            return None
        files = {
            setting: self._role_file(source, folder, settings.get(setting), at(setting))
            for setting, folder in ROLE_FILES.items()
        }
        if any(rel is None for rel in files.values()):
            return None
        tasks_rel = files["tasks_from"] or ""
        entry = f"{source.name}:{tasks_rel or 'tasks/main.yml'}"
        if entry in self.stack or (not self.stack and source.name == self.role and not tasks_rel):
            self.error(at("name"), f"{kind} of '{source.name}' includes itself ({' -> '.join(self.stack + (entry,))})")
            return None
        apply = self._apply(settings.get("apply"), at("apply"))
        block = _with_applied(
            {k: v for k, v in data.items() if k in BLOCK_KEYS and k not in ("block", "rescue", "always")}, apply
        )
        loop_var, index_var = (self._loop_var(data, path), _index_var(data)) if loops else ("", "")
        loop_names = frozenset(n for n in (loop_var, index_var) if n)
        self.c.loop_vars.update(loop_names)
        param_names = frozenset(block["vars"]) if isinstance(block.get("vars"), dict) else frozenset()
        own_tags = self._tags(data, path, StepContext()) if kind == "import_role" else []
        inner_tags = tuple(dict.fromkeys([*ctx.tags, *own_tags, *self._tags(apply, at("apply"), StepContext())]))
        inner = StepContext(inner_tags, ctx.extra | loop_names | param_names, ctx.no_log, ctx.ignore_errors)
        steps = self._role_tasks(source, tasks_rel, inner, entry)
        if steps is None:
            return None
        outer = StepContext(ctx.tags, ctx.extra | loop_names, ctx.no_log, ctx.ignore_errors)
        compiled = self._block(block, path, outer, step, [])
        compiled["block"] = steps
        inherit_keywords(compiled)
        notify_inside(compiled)
        if kind == "import_role":
            check_per_task(compiled)
        if not block.get("name"):
            compiled["name"] = f"{kind} {source.name}" + (f" ({tasks_rel[len('tasks/') :]})" if tasks_rel else "")
        self.c.role_uses.append(
            RoleUse(
                source.name,
                self.doc,
                at("name"),
                files["vars_from"] or "",
                files["defaults_from"] or "",
                files["handlers_from"] or "",
                main=not tasks_rel,
                kind=kind,
                public=settings.get("public"),
                by=self.role,
            )
        )
        if loops:
            self._include_loop(data, path, loops[0], ctx, compiled, loop_var, index_var)
        return compiled

    def _role_settings(self, kind: str, value: Any, where: tuple[Any, ...]) -> dict[str, Any] | None:
        if isinstance(value, str) and "=" in value:
            try:
                value = ansible.parse_key_values(value)
            except ansible.KeyValueError as exc:
                self.error(where, str(exc))
                return None
        if not isinstance(value, dict):
            self.error(
                where, f"{kind} needs settings with the role's name ({kind}: {{name: my_role}}), got {kind_of(value)}"
            )
            return None
        known = ROLE_SETTINGS if kind == "include_role" else tuple(s for s in ROLE_SETTINGS if s != "apply")
        for name in value:
            if name not in known:
                why = (
                    ": apply is for include_role (import_role's keywords hold for every task already)"
                    if name == "apply"
                    else did_you_mean(name, known)
                )
                self.error(where + (name,), f"unknown {kind} setting '{name}'{why}", key=True)
                return None
        for name in ("public", "allow_duplicates", "rolespec_validate"):
            if name in value and not isinstance(value[name], bool):
                self.error(where + (name,), f"{name} must be true or false, got {value[name]!r}")
                return None
        return value

    def _named_role(self, kind: str, name: Any, where: tuple[Any, ...]) -> Any:
        if not isinstance(name, str) or not name.strip():
            self.error(where, f"{kind} needs the name of a role in playbooks/roles/, got {kind_of(name)}")
            return None
        if is_templated(name):
            self.error(where, f"{kind} needs a literal role name (kiln reads the role when compiling), got '{name}'")
            return None
        source = self.c.roles.find(name) if self.c.roles is not None else None
        if source is None:
            known = self.c.roles.names() if self.c.roles is not None else []
            self.error(where, f"unknown role '{name}' in playbooks/roles/{did_you_mean(name, known)}")
        return source

    def _role_file(self, source: Any, folder: str, name: Any, where: tuple[Any, ...]) -> str | None:
        """``tasks/<name>.yml`` as the role's tree has it ("" when no name is given); None: not there."""
        if name is None:
            return ""
        if not isinstance(name, str) or not name.strip() or is_templated(name) or ".." in name.split("/"):
            self.error(where, f"name a file of the role's {folder}/ (a literal name), got {name!r}")
            return None
        for candidate in (name, f"{name}.yml", f"{name}.yaml", f"{name}.json"):
            if f"{folder}/{candidate}" in source.tree.files:
                return f"{folder}/{candidate}"
        present = sorted(source.tree.under(folder))
        self.error(where, f"'{name}' not found in {source.name}'s {folder}/{did_you_mean(name, present)}")
        return None

    def _apply(self, value: Any, where: tuple[Any, ...]) -> dict[str, Any]:
        """include_role's ``apply``: keywords for every included task, as a block's (tags, become, when, ...)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(where, f"apply must be a mapping of task keywords (tags, become, ...), got {kind_of(value)}")
            return {}
        for name in value:
            if name not in BLOCK_KEYS or name in ("block", "rescue", "always"):
                allowed = ", ".join(k for k in BLOCK_KEYS if k not in ("block", "rescue", "always"))
                self.error(where + (name,), f"apply cannot carry '{name}' (kiln applies {allowed})", key=True)
        return {k: v for k, v in value.items() if k in BLOCK_KEYS}

    def with_dependency_settings(self, path: tuple[Any, ...], steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A dependency listed (in this document, at ``path``) with when, vars, tags or role parameters: its
        steps in a block that carries them, its when checked by each task and its tags on each, as Ansible
        applies them to a role."""
        entry = self.doc.data[path[0]][path[1]]
        if not isinstance(entry, dict):
            return steps
        given = {k: v for k, v in entry.items() if k not in DEPENDENCY_KEYS}
        settings = {k: entry[k] for k in DEPENDENCY_SETTINGS if k in entry}
        if given:
            own = settings.get("vars") if isinstance(settings.get("vars"), dict) else {}
            settings["vars"] = {**given, **own}
        if not settings:
            return steps
        name = entry.get("role") or entry.get("name")
        block = self.compile_step(
            {**without(settings, "when"), "name": f"role {name}", "block": [{"meta": "noop"}]}, path, StepContext()
        )
        if block is None:
            return steps
        if isinstance(settings.get("vars"), dict):
            self.c.params.update(settings["vars"])
        if "when" in settings:  # checked by each of the role's tasks (check_per_task below)
            block["when"] = self._condition(settings["when"], path + ("when",), StepContext().extra)
        block["block"] = steps
        _add_tags(steps, block.pop("tags", []))
        inherit_keywords(block)
        check_per_task(block)
        return [block]

    def _role_tasks(self, source: Any, tasks_rel: str, ctx: StepContext, entry: str) -> list[dict[str, Any]] | None:
        """The included role's dependencies that have not run yet, then its tasks."""
        self.c.vars_files.setdefault(source.name, source.vars_files)
        steps: list[dict[str, Any]] = []
        for dep, (doc, dep_path) in zip(source.depends, source.dep_refs, strict=True):
            found = self.c.roles.find(dep) if self.c.roles is not None else None
            if found is None or self.c.roles.ran(found.name) or f"{found.name}:tasks/main.yml" in self.stack:
                continue  # an unknown dependency is reported where it is listed
            self.c.roles.mark_ran(found.name)  # a dependency runs once (Ansible's allow_duplicates: false)
            self.c.role_uses.append(RoleUse(found.name, doc, dep_path, by=source.name))
            listing = StepCompiler(self.c, self.modules, source.name, source.dir, doc, source.tree, self.stack)
            found_steps = self._role_tasks(found, "", ctx, f"{found.name}:tasks/main.yml") or []
            steps += listing.with_dependency_settings(dep_path, found_steps)
        if tasks_rel:
            try:
                doc = load_yaml(source.tree.files[tasks_rel], source.tree.shown(tasks_rel), yaml11=True)
            except Exception as exc:  # noqa: BLE001 - InvalidInput: its diagnostics are the problems
                self.c.diagnostics.extend(getattr(exc, "diagnostics", []))
                return None
        else:
            doc = source.steps_doc
        if doc is None or doc.data is None:
            return steps
        inner = StepCompiler(self.c, self.modules, source.name, source.dir, doc, source.tree, self.stack + (entry,))
        if not isinstance(doc.data, list):
            inner.error((), f"a tasks file is a list of steps (each starting with '- '), got {kind_of(doc.data)}")
            return None
        return steps + inner.compile_list(doc.data, (), ctx)

    def _next(self) -> int:
        self.c.index += 1
        return self.c.index

    def _include_vars(
        self, key: str, data: dict[str, Any], path: tuple[Any, ...], ctx: StepContext, step: dict[str, Any]
    ) -> dict[str, Any] | None:
        """A step loading the first candidate found among the role's vars/ files (read here, chosen on the box)."""
        value = data[key]
        where = path + (key,)
        if isinstance(value, dict):
            value, where = value.get("file") or value.get("_raw_params"), where + ("file",)
        step["module"] = "include_vars"
        self._name(data, path, step)
        for other in data:
            if other not in (
                key,
                "name",
                "when",
                "with_first_found",
                "tags",
                "no_log",
                "loop",
                "vars",
                "ignore_errors",
            ):
                self.error(path + (other,), f"'{other}' cannot be used with include_vars", key=True)
        own = self._scoped(data, path, step, ctx.extra)
        ctx = replace(ctx, extra=ctx.extra | own)
        if "when" in data:
            step["when"] = self._condition(data["when"], path + ("when",), ctx.extra)
        tags = self._tags(data, path, ctx)
        if tags:
            step["tags"] = tags
        files = self.c.vars_files.get(self.role, {})
        candidates: list[str] = []
        places: list[tuple[Any, ...]] = []
        skip = False  # first_found's skip: no file found is no error, the task is skipped
        if "with_first_found" in data:
            found = data["with_first_found"]
            if isinstance(found, dict):
                skip = _truthy(found.get("skip", False))
                found = found.get("files", [])
            entries = found if isinstance(found, list) else [found]
            for index, item in enumerate(entries):
                where_item = (
                    path + ("with_first_found", index) if isinstance(found, list) else path + ("with_first_found",)
                )
                if isinstance(item, dict) and isinstance(item.get("files"), list):  # {files: [...], paths: [...]}
                    skip = skip or _truthy(item.get("skip", False))
                    candidates += [f for f in item["files"] if isinstance(f, str)]
                    places += [where_item] * len([f for f in item["files"] if isinstance(f, str)])
                elif isinstance(item, str):
                    candidates.append(item)
                    places.append(where_item)
                else:
                    self.error(where_item, f"with_first_found lists file names, got {kind_of(item)}")
            if not candidates:
                self.error(path + ("with_first_found",), "with_first_found lists no file")
                return None
        elif isinstance(value, str) and (searched := self._first_found_lookup(value, data, path, where)) is not None:
            candidates, places = searched
            if not candidates:
                return None
        elif isinstance(value, str):
            candidates, places = [value], [where]
        else:
            self.error(where, f"include_vars needs a file of the role's vars/, got {kind_of(value)}")
            return None
        candidates = [_in_vars(name, files) for name in candidates]
        first_wins = len(candidates) > 1 or "with_first_found" in data
        matching = {name: any(fnmatch.fnmatch(f, ansible.glob_of(name)) for f in files) for name in candidates}
        for name, place in zip(candidates, places, strict=True):
            self._templated(name, place, ctx.extra)
            if (first_wins and any(matching.values())) or skip:
                continue  # the first that exists wins: the others may be missing
            if is_templated(name) and not matching[name]:
                self.error(place, f"no file in the role's vars/ matches '{name}'")
            elif not is_templated(name) and name not in files:
                self.error(place, f"'{name}' not found in the role's vars/{did_you_mean(name, list(files))}")
        step["args"] = {"file": _first_found(candidates, files)}
        if skip:
            _add_condition([step], _any_found(candidates, files))
        if isinstance(data[key], dict) and isinstance(data[key].get("name"), str):
            step["args"]["name"] = data[key]["name"]
            self.c.registers.add(data[key]["name"])
        if not step["name"]:
            step["name"] = f"include_vars {', '.join(candidates)}"
        return step

    def _first_found_lookup(
        self, value: str, data: dict[str, Any], path: tuple[Any, ...], where: tuple[Any, ...]
    ) -> tuple[list[str], list[tuple[Any, ...]]] | None:
        """include_vars' ``"{{ lookup('first_found', params) }}"``: the files it searches, relative to the role's
        vars/, each with its place (None: the file is not such a lookup, or its terms are not written here).

        Its terms are what Ansible's first_found takes: names, lists of them, mappings of ``files`` and
        ``paths`` (each path joined to each file), written in the lookup or in the task's own ``vars``.
        """
        call = first_found_call(value)
        if call is None:
            return None
        own = data.get("vars") if isinstance(data.get("vars"), dict) else {}
        terms: list[tuple[Any, tuple[Any, ...]]] = []
        for node in call.args[1:]:
            if isinstance(node, nodes.Name) and node.name in own:
                terms.append((own[node.name], path + ("vars", node.name)))
            else:
                try:
                    terms.append((node.as_const(), where))
                except nodes.Impossible:
                    return None  # computed when it runs: the box's lookup
        given = {kw.key: kw.value for kw in call.kwargs}
        if given:
            try:
                terms.append(({k: v.as_const() for k, v in given.items()}, where))
            except nodes.Impossible:
                return None
        searched = [(name, place) for term, place in terms for name, place in _searched(term, place)]
        in_vars = [(name[len("vars/") :], place) for name, place in searched if name.startswith("vars/")]
        if not in_vars:
            self.error(
                where,
                "lookup('first_found') names no file of the role's vars/ (include_vars reads vars/<name>: "
                "give paths: [vars] or files: [vars/<name>])",
            )
            return [], []
        return [name for name, _ in in_vars], [place for _, place in in_vars]

    def _unknown_message(self, key: str, has_module: bool) -> str:
        if key in HINTS:
            return f"'{key}' is not a kiln step keyword: {HINTS[key]}"
        if key.startswith("with_"):
            return f"'{key}' is not a kiln step keyword: use 'loop'"
        keywords = [k for k in CONTROL_KEYS if k != "idempotent_reason" and "." not in k]  # no FQCN loop as a hint
        close = difflib.get_close_matches(key, keywords + list(self.modules), n=1, cutoff=0.6)
        if close and close[0] in keywords:
            return f"unknown step keyword '{key}' (did you mean '{close[0]}'?)"
        if close:
            return f"unknown module '{key}' (did you mean '{close[0]}'?)"
        if not has_module:
            return f"unknown module '{key}' (see docs/step-files.md for the modules)"
        return f"unknown step keyword '{key}'"

    # --- keywords --------------------------------------------------------------
    def _keywords(
        self, data: dict[str, Any], path: tuple[Any, ...], ctx: StepContext, step: dict[str, Any]
    ) -> frozenset[str]:
        """Check the control keywords of a module step; return the loop variable's name (if any)."""
        ctx = replace(ctx, extra=ctx.extra | own_var_names(data))
        self._name(data, path, step)
        if is_templated(step["name"]):
            self.c.refs.append(Ref(self.doc, path + ("name",), step["name"], True, ctx.extra | {"item"}))
        loop_names: frozenset[str] = frozenset()
        loops = [k for k in data if k == "loop" or (k.startswith("with_") and k in KEYWORDS)]
        for key in loops[1:]:
            self.error(path + (key,), f"two loops in one step: '{loops[0]}' and '{key}'", key=True)
        if loops:
            loop_var = self._loop_var(data, path)
            loop_names = frozenset({loop_var}) | self._loop_control(data, path, step, ctx.extra | {loop_var})
            secret = hiding(data.get("no_log", ctx.no_log), step)
            # a loop that fails on an undefined name waits for the when, which skips the task (Ansible's executor)
            guarded = ctx.extra | definedness_guards(data.get("when"))[0]
            step["loop"] = self._ansible_loop(loops[0], data[loops[0]], path + (loops[0],), guarded, secret)
            if loop_var != "item":
                step["loop_var"] = loop_var
            self.c.loop_vars.update(loop_names)
        elif "loop_var" in data:
            self.error(path + ("loop_var",), "'loop_var' without 'loop'", key=True)
        elif "loop_control" in data:
            self._loop_var(data, path)  # its settings checked; Ansible reads none of them without a loop

        extra = ctx.extra | loop_names
        for key in EXPRESSION_KEYS:
            if key in data:
                step[key] = self._condition(data[key], path + (key,), extra)
        if "register" in data:
            value = self._judged(data, path, "register")
            if value is not None:
                step["register"] = value
                self.c.registers.add(value)
        for key in ("retries", "delay", "timeout"):
            value = self._judged(data, path, key) if key in data else None
            if value is not None:
                step[key] = value
                if is_templated(value):
                    self.c.refs.append(Ref(self.doc, path + (key,), value, True, extra))
        if is_templated(data.get("ignore_errors")):  # rendered when compiling (ansible_check_mode, variables)
            self.c.refs.append(Ref(self.doc, path + ("ignore_errors",), data["ignore_errors"], True, extra))
            self.c.templated_flags.append((step, self.doc, path + ("ignore_errors",), "ignore_errors"))
            step["ignore_errors"] = data["ignore_errors"]
        for key in ("ignore_errors", "no_log"):
            if key == "ignore_errors" and is_templated(data.get(key)):
                continue
            value = self._bool(data, path, key) if key in data else getattr(ctx, key)
            if value is not None:
                step[key] = value
        self._templated_no_log(data, path, step, extra)
        if "notify" in data:
            step["notify"] = self._notify(data["notify"], path + ("notify",))
        extra = ctx.extra | loop_names | self._scoped(data, path, step, ctx.extra | loop_names)
        if "listen" in data:
            if not ctx.handler:
                self.error(
                    path + ("listen",), "'listen' belongs to a handler (handlers/main.yml or handlers.yml)", key=True
                )
            value = self._judged(data, path, "listen")
            if value is not None:
                step["listen"] = value
        tags = self._tags(data, path, ctx)
        if tags:
            step["tags"] = tags
        self._idempotent(data, path, step)
        return extra

    def _templated_no_log(
        self, data: dict[str, Any], path: tuple[Any, ...], step: dict[str, Any], extra: frozenset[str]
    ) -> None:
        """``no_log: "{{ secret_mode }}"`` (its own or its block's): its names checked where it is written, its value
        decided when compiling where the controller knows it (compile.py), else on the box, where a template left
        as written redacts."""
        if not is_templated(step.get("no_log")):
            return
        if "no_log" in data:
            self.c.refs.append(Ref(self.doc, path + ("no_log",), step["no_log"], True, extra))
        self.c.templated_flags.append((step, self.doc, path + ("no_log",), "no_log"))

    def _scoped(
        self, data: dict[str, Any], path: tuple[Any, ...], step: dict[str, Any], extra: frozenset[str]
    ) -> frozenset[str]:
        """become/become_user, run_once, vars, environment and check_mode; the names ``vars`` defines."""
        names: frozenset[str] = frozenset()
        if "become" in data:
            self._judged(data, path, "become")
        if "run_once" in data:  # a bake has one host: every step runs once, so it is checked and changes nothing
            value = self._judged(data, path, "run_once")
            if is_templated(value):
                self.c.refs.append(Ref(self.doc, path + ("run_once",), value, True, extra))
        if "become_user" in data:
            value = self._judged(data, path, "become_user")
            if value is not None and data.get("become", True) is not False:
                step["become_user"] = value
                if is_templated(value):
                    self.c.refs.append(Ref(self.doc, path + ("become_user",), value, True, extra))
        if "vars" in data:
            value = data["vars"]
            if not isinstance(value, dict):
                self.error(path + ("vars",), f"vars must be a mapping of variables, got {kind_of(value)}")
            else:
                for name in value:
                    if not IDENTIFIER.match(name) or name in RESERVED_NAMES:
                        self.error(path + ("vars", name), f"'{name}' cannot be a variable name", key=True)
                names = frozenset(value)
                self._templated(value, path + ("vars",), extra | names)
                step["vars"] = value
        if "environment" in data:
            value = data["environment"]
            if isinstance(value, str) and is_templated(value):
                self.c.refs.append(Ref(self.doc, path + ("environment",), value, True, extra | names))
            elif not isinstance(value, dict):
                self.error(
                    path + ("environment",), f"environment must be a mapping of names to values, got {kind_of(value)}"
                )
                value = None
            else:
                self._templated(value, path + ("environment",), extra | names)
            if value is not None:
                step["environment"] = value
        if "check_mode" in data:
            value = self._judged(data, path, "check_mode")
            if value is not None:
                step["check_mode"] = value
        return names

    def _loop_control(
        self, data: dict[str, Any], path: tuple[Any, ...], step: dict[str, Any], extra: frozenset[str]
    ) -> frozenset[str]:
        control = data.get("loop_control")
        if not isinstance(control, dict):
            return frozenset()
        names = set()
        out = {}
        for key in ("label", "index_var", "extended", "pause", "loop_var"):
            if key in control:
                out[key] = control[key]
        if isinstance(control.get("index_var"), str):
            names.add(control["index_var"])
        if control.get("extended") is True:
            names.add("ansible_loop")
        if is_templated(control.get("label")):
            self.c.refs.append(Ref(self.doc, path + ("loop_control", "label"), control["label"], True, extra | names))
        step["loop_control"] = out
        return frozenset(names)

    def _ansible_loop(self, key: str, value: Any, path: tuple[Any, ...], extra: frozenset[str], secret: bool) -> Any:
        """The bundle's ``loop`` for ``loop`` or one of Ansible's ``with_*``."""
        if key == "with_dict":
            if isinstance(value, dict):
                self._templated(value, path, extra, secret)
                return [{"key": k, "value": v} for k, v in value.items()]
            if isinstance(value, str):
                self._expression(value, path, extra)
                inner = WHOLE_EXPRESSION.match(value)
                return "{{ (" + (inner.group(1) if inner else value).strip() + ") | dict2items }}"
            self.error(path, f"with_dict needs a mapping or an expression giving one, got {kind_of(value)}")
            return []
        if key == "with_fileglob":
            return self._fileglob(value, path)
        if key == "with_first_found":
            self.error(
                path,
                "with_first_found is for include_vars and include_tasks (a file of the role); "
                "for another module, name the file or choose it with a when",
            )
            return []
        if key in LOOKUP_LOOPS:
            return self._lookup_loop(LOOKUP_LOOPS[key], value, path, extra, secret)
        if key == "with_items" and isinstance(value, list):  # with_items flattens one level
            value = [x for item in value for x in (item if isinstance(item, list) else [item])]
        self._loop(value, path, extra, secret)
        if key == "with_items" and (isinstance(value, str) or (isinstance(value, list) and any_templated(value))):
            return _flattened_on_the_box(value)
        return value

    def _lookup_loop(self, lookup: str, value: Any, path: tuple[Any, ...], extra: frozenset[str], secret: bool) -> str:
        """``with_<lookup>`` as Ansible runs it: its terms (the list written, or the list a template gives) handed to
        the lookup, on the box, where the names they read have their values."""
        self._loop(value, path, extra, secret)
        if isinstance(value, list):
            terms = as_expression(value)
        elif isinstance(value, str):
            inner = WHOLE_EXPRESSION.match(value)
            given = inner.group(1).strip() if inner else ansible.template_to_expression(value)
            terms = f"([({given})] if ({given}) is string or ({given}) is mapping else ({given}))"
        else:
            return "{{ [] }}"  # refused by _loop
        return "{{ query(" + repr(lookup) + ", *" + terms + ") }}"

    def _fileglob(self, value: Any, path: tuple[Any, ...]) -> list[str]:
        patterns = [value] if isinstance(value, str) else value if isinstance(value, list) else None
        if patterns is None or not all(isinstance(p, str) for p in patterns):
            self.error(path, f"with_fileglob needs a pattern or a list of them, got {kind_of(value)}")
            return []
        found: list[str] = []
        files = self.tree.under("files") if self.tree else {}
        for index, pattern in enumerate(patterns):
            where = path + (index,) if isinstance(value, list) else path
            if is_templated(pattern) or pattern.startswith("/") or ".." in pattern.split("/"):
                self.error(
                    where,
                    f"with_fileglob pattern '{pattern}': kiln expands it in the role's files/ when "
                    "compiling; give a literal pattern relative to files/",
                )
                continue
            found += sorted(rel for rel in files if fnmatch.fnmatch(rel, pattern))
        return found

    def _judged(self, data: dict[str, Any], path: tuple[Any, ...], key: str) -> Any:
        """``data[key]`` as its declaration (keywords.py) types it; None (and a diagnostic) when it is not."""
        value, problem = judge(key, data[key])
        if problem:
            self.error(path + (key,), problem)
            return None
        return value

    def _name(self, data: dict[str, Any], path: tuple[Any, ...], step: dict[str, Any]) -> None:
        if "name" not in data:
            return
        value, problem = judge("name", data["name"])
        if problem:
            self.error(path + ("name",), f"name must be a non-empty string, got {kind_of(data['name'])}")
        else:
            step["name"] = str(value)

    def _bool(self, data: dict[str, Any], path: tuple[Any, ...], key: str) -> bool | None:
        return self._judged(data, path, key)

    def _loop_var(self, data: dict[str, Any], path: tuple[Any, ...]) -> str:
        name: Any = "item"
        where = path + ("loop_var",)
        if "loop_control" in data:
            control = data["loop_control"]
            if not isinstance(control, dict):
                self.error(
                    path + ("loop_control",),
                    f"loop_control must be {KEYWORDS['loop_control']['expect']}, got {kind_of(control)}",
                )
            else:
                for key in control:
                    if key not in KEYWORDS["loop_control"]["args"]:
                        self.error(
                            path + ("loop_control", key),
                            f"unknown loop_control setting '{key}'"
                            f"{did_you_mean(key, KEYWORDS['loop_control']['args'])}",
                            key=True,
                        )
                if "loop_var" in control:
                    name, where = control["loop_var"], path + ("loop_control", "loop_var")
            if "loop_var" in data:
                self.error(path + ("loop_var",), "loop_var is given twice (here and in loop_control)", key=True)
        if "loop_var" in data:
            name, where = data["loop_var"], path + ("loop_var",)
        if judge("loop_var", name)[1]:
            self.error(where, f"loop_var needs a variable name (letters, digits, _), got {name!r}")
            return "item"
        return name

    def _loop(self, value: Any, path: tuple[Any, ...], extra: frozenset[str], no_log: Hiding = False) -> None:
        if isinstance(value, str):
            self._expression(value, path, extra)
            self._keep_secret(names_of(Ref(self.doc, path, value, False)), no_log)
        elif isinstance(value, list):
            self._templated(value, path, extra, no_log)
        else:
            self.error(path, f"loop must be a list or an expression giving one, got {kind_of(value)}")

    def _condition(self, value: Any, path: tuple[Any, ...], extra: frozenset[str]) -> Any:
        if isinstance(value, list):
            for index, item in enumerate(value):
                self._condition(item, path + (index,), extra)
            return value
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            if self.doc.style(path) == PLAIN and value.lower() in YAML11_BOOLS:
                self.error(
                    path,
                    f"'{value}' is a string in YAML 1.2, not a boolean (YAML 1.1 reads it as one);"
                    f" write {'true' if value.lower() in ('yes', 'on', 'y') else 'false'}",
                )
                return value
            self._expression(value, path, extra)
            return value
        self.error(path, f"{path[-1]} must be an expression (a string) or true/false, got {kind_of(value)}")
        return value

    def _expression(self, value: str, path: tuple[Any, ...], extra: frozenset[str]) -> None:
        self.c.refs.append(Ref(self.doc, path, value, False, extra))

    def _templated(self, value: Any, path: tuple[Any, ...], extra: frozenset[str], no_log: Hiding = False) -> None:
        """Collect every templated string inside ``value`` (args, loop items)."""
        if isinstance(value, dict):
            for key, item in value.items():
                self._templated(item, path + (key,), extra, no_log)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._templated(item, path + (index,), extra, no_log)
        elif is_templated(value):
            ref = Ref(self.doc, path, value, True, extra)
            self.c.refs.append(ref)
            self._keep_secret(names_of(ref), no_log)

    def _keep_secret(self, names: set[str], no_log: Hiding) -> None:
        """The names a no_log step reads are secrets; those of a step whose no_log is a template, if it hides it."""
        if no_log is True:
            self.c.no_log_names.update(names)
        elif no_log:
            self.c.maybe_secret.append((no_log, names))

    def _notify(self, value: Any, path: tuple[Any, ...]) -> list[str]:
        names: list[str] = []
        items = (
            [(value, path)]
            if isinstance(value, str)
            else ([(v, path + (i,)) for i, v in enumerate(value)] if isinstance(value, list) else [])
        )
        if not items and not isinstance(value, list):
            self.error(path, f"notify must be a handler name or a list of them, got {kind_of(value)}")
        for name, where in items:
            if not isinstance(name, str):
                self.error(where, f"notify names a handler by its name (a string), got {kind_of(name)}")
                continue
            self.c.notifies.append((self.doc, where, name))
            names.append(name)
        return names

    def _tags(self, data: dict[str, Any], path: tuple[Any, ...], ctx: StepContext) -> list[str]:
        own: list[str] = []
        if "tags" in data:
            value = data["tags"]
            if isinstance(value, str):
                own = [t.strip() for t in value.split(",") if t.strip()]
            elif isinstance(value, list) and not judge("tags", value)[1]:
                own = [str(t) for t in value]
            else:
                self.error(path + ("tags",), f"tags must be a name or a list of names, got {kind_of(value)}")
        tags = list(ctx.tags)
        for tag in own:
            if tag not in tags:
                tags.append(tag)
        return tags

    def _idempotent(self, data: dict[str, Any], path: tuple[Any, ...], step: dict[str, Any]) -> None:
        reason = data.get("idempotent_reason")
        if "idempotent_reason" in data and judge("idempotent_reason", reason)[1]:
            self.error(path + ("idempotent_reason",), "idempotent_reason must be a non-empty string")
            reason = None
        if "idempotent" not in data:
            if "idempotent_reason" in data:
                self.error(path + ("idempotent_reason",), "idempotent_reason without 'idempotent: false'", key=True)
            return
        value = self._bool(data, path, "idempotent")
        if value is None:
            return
        if value:
            if "idempotent_reason" in data:
                self.error(
                    path + ("idempotent_reason",), "idempotent_reason only applies to 'idempotent: false'", key=True
                )
            return
        comment = self.doc.line_comment(path + ("idempotent",))
        why = (reason or "").strip() or comment
        if not why:
            self.error(
                path + ("idempotent",),
                "'idempotent: false' needs a reason: a comment on the same line "
                '(idempotent: false  # why) or idempotent_reason: "..."',
            )
            return
        step["idempotent"] = False
        step["idempotent_reason"] = why

    # --- module arguments --------------------------------------------------------
    def _args(
        self,
        module: str,
        given: Any,
        path: tuple[Any, ...],
        step: dict[str, Any],
        extra: frozenset[str],
        mapping: ansible.Mapping | None = None,
    ) -> None:
        schema = self.modules[module].SCHEMA
        pending = {}
        if mapping and isinstance(given, dict):  # arguments the agent module has yet to learn pass unchecked
            known = set(schema.get("args", {})) | {
                a for s in schema.get("args", {}).values() for a in s.get("aliases", [])
            }
            pending = {k: v for k, v in given.items() if k in mapping.pending and k not in known}
            given = {k: v for k, v in given.items() if k not in pending}
        errors = check_args(self.doc, mapping.ansible if mapping else module, schema, given, path)
        self.c.diagnostics.extend(errors)
        self._templated(pending, path, extra)
        if isinstance(given, dict):
            args = dict(given, **pending)
        elif given is None:
            args = {}
        elif schema.get("free_form") and isinstance(given, (str, int, float)) and not isinstance(given, bool):
            args = {schema["free_form"]: given}
        else:
            args = {}
        self._templated(given, path, extra, no_log=hiding(step.get("no_log"), step))
        if self.doc.yaml11 and any(
            spec.get("type") == "mode" and is_templated(args.get(name)) for name, spec in schema.get("args", {}).items()
        ):
            step["int_mode_is_bits"] = True  # Ansible's: a mode a template renders as a number is its bits
        folder = SRC_DIRS.get(module)
        if folder and isinstance(args.get("src"), str) and not _src_on_the_box(module, args):
            src = args["src"]
            src_path = path + ("src",) if isinstance(given, dict) else path
            if not is_templated(src) and not src.startswith("/"):  # absolute: a file already on the box
                self._check_src(src, folder, src_path)
                if folder == "templates":
                    self.c.template_uses.append(TemplateUse(self.role, src, extra))
            elif folder == "templates" and is_templated(src):  # any template of the role may be the one
                self.c.templated_src.setdefault(self.role, set()).update(extra)
            if not src.startswith("/"):
                args["src"] = f"{self.role}/{src}"
        step["args"] = args

    def _check_src(self, src: str, folder: str, path: tuple[Any, ...]) -> None:
        if ".." in src.split("/"):
            self.error(path, f"src '{src}' uses '..': name a file of the role's {folder}/ by its path there")
            return
        base = self.role_dir / folder
        target = base / src
        try:  # without '..' only a symlink can lead elsewhere: one within the role is followed, as in Ansible
            inside = target.resolve().is_relative_to(self.role_dir.resolve())
        except OSError:
            inside = False
        if not inside:
            self.error(path, f"src '{src}' leads out of the role (through a symlink)")
            return
        if not target.exists():
            present = (
                sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()) if base.is_dir() else []
            )
            self.error(path, f"'{src}' not found in {display_path(base)}/{did_you_mean(src, present)}")

    # --- blocks, flush_handlers -----------------------------------------------------
    def _block(
        self,
        data: dict[str, Any],
        path: tuple[Any, ...],
        ctx: StepContext,
        step: dict[str, Any],
        module_keys: list[str],
    ) -> dict[str, Any]:
        step["module"] = "block"
        del step["args"]
        for key in module_keys:
            self.error(path + (key,), f"a block cannot also run a module ('{key}'): move it into the block", key=True)
        for key in data:
            if key in CONTROL_KEYS and key not in BLOCK_KEYS:
                self.error(
                    path + (key,),
                    f"'{key}' cannot be used on a block (only {', '.join(k for k in BLOCK_KEYS)})",
                    key=True,
                )
        self._name(data, path, step)
        if "when" in data:  # each task inside checks it, seeing the block's vars
            step["when"] = self._condition(data["when"], path + ("when",), ctx.extra | own_var_names(data))
        tags = self._tags(data, path, ctx)
        if tags:
            step["tags"] = tags
        no_log = self._bool(data, path, "no_log") if "no_log" in data else ctx.no_log
        if is_templated(no_log) and "no_log" in data:  # decided for each step inside, which inherits it
            self.c.refs.append(Ref(self.doc, path + ("no_log",), no_log, True, ctx.extra | own_var_names(data)))
        ignore = self._bool(data, path, "ignore_errors") if "ignore_errors" in data else ctx.ignore_errors
        names = self._scoped(data, path, step, ctx.extra)
        if "notify" in data:
            step["notify"] = self._notify(data["notify"], path + ("notify",))
        guards = definedness_guards(data.get("when"))[0]  # each task inside checks the block's when first
        inner = StepContext(tuple(tags), ctx.extra | names | guards, no_log, ignore, ctx.handler)
        for key in ("block", "rescue", "always"):
            if key not in data:
                continue
            value = data[key]
            if value is None and key != "block":
                step[key] = []
                continue
            if not isinstance(value, list) or (key == "block" and not value):
                self.error(
                    path + (key,),
                    f"{key} must be a non-empty list of steps, got {kind_of(value)}"
                    if not isinstance(value, list)
                    else f"{key} is empty",
                )
                step[key] = []
                continue
            scope = (
                inner
                if key != "rescue"
                else StepContext(inner.tags, inner.extra | {"kiln_failed_step"}, no_log, ignore, ctx.handler)
            )
            step[key] = self.compile_list(value, path + (key,), scope)
        step.setdefault("rescue", [])
        step.setdefault("always", [])
        inherit_keywords(step)
        if "block" in data:  # an import's steps are given it after (its caller hands them down)
            notify_inside(step)
        if not step["name"]:
            step["name"] = "block"
        return step

    def _flush(
        self,
        data: dict[str, Any],
        path: tuple[Any, ...],
        ctx: StepContext,
        step: dict[str, Any],
        module_keys: list[str],
    ) -> dict[str, Any]:
        for key in data:
            if key in module_keys or (key in CONTROL_KEYS and key not in FLUSH_KEYS):
                self.error(path + (key,), f"'{key}' cannot be used with flush_handlers (only name, tags)", key=True)
        if data["flush_handlers"] is not True:
            self.error(path + ("flush_handlers",), f"write 'flush_handlers: true', got {data['flush_handlers']!r}")
        self._name(data, path, step)
        out = {
            "index": step["index"],
            "name": step["name"] or "flush handlers",
            "module": "flush_handlers",
            "args": {},
            "source": step["source"],
            "role": self.role,
        }
        # flushing is not a change of its own: it stays under --tags unless given tags of its own
        out["tags"] = self._tags(data, path, ctx) if "tags" in data else list(ctx.tags) + ["always"]
        return out


def _free_form_arguments(text: str, free_form: str) -> dict[str, Any]:
    """A command's ``key=value`` words (creates, chdir, ...) as arguments, the rest its free form, split as
    Ansible splits them (quotes and Jinja kept whole: ``make prefix={{ path }} {{ item }}``)."""
    options: dict[str, Any] = parse_kv(text, ansible.COMMAND_KV)
    if RAW in options:
        options[free_form] = options.pop(RAW)
    return options


def first_found_call(value: str) -> nodes.Call | None:
    """The ``lookup('first_found', ...)`` call when ``value`` is nothing else."""
    try:
        body = ENV.parse(value).body
    except jinja2.TemplateSyntaxError:
        return None  # reported where the template is checked
    if len(body) != 1 or not isinstance(body[0], nodes.Output) or len(body[0].nodes) != 1:
        return None
    call = body[0].nodes[0]
    if not isinstance(call, nodes.Call) or not isinstance(call.node, nodes.Name) or call.node.name != "lookup":
        return None
    first = call.args[0] if call.args else None
    return call if isinstance(first, nodes.Const) and first.value == "first_found" else None


def _searched(term: Any, place: tuple[Any, ...]) -> list[tuple[str, tuple[Any, ...]]]:
    """The names a first_found term searches, in order (Ansible's _process_terms): a name; a list of terms; a
    mapping's ``files`` (split on , and ;) under each of its ``paths`` (split on , : and ;)."""
    if isinstance(term, str):
        return [(term, place)]
    if isinstance(term, list):
        return [found for index, item in enumerate(term) for found in _searched(item, place + (index,))]
    if not isinstance(term, dict):
        return []
    files = _split_names(term.get("files"), ",;", place + ("files",))
    paths = _split_names(term.get("paths"), ",:;", place + ("paths",))
    if not paths:
        return files
    return [(f"{folder.rstrip('/')}/{name}", at) for folder, _ in paths for name, at in files]


def _split_names(value: Any, separators: str, place: tuple[Any, ...]) -> list[tuple[str, tuple[Any, ...]]]:
    items = value if isinstance(value, list) else [] if value is None else [value]
    found = []
    for index, item in enumerate(items):
        at = place + (index,) if isinstance(value, list) else place
        text = str(item)
        parts = [text] if is_templated(text) else re.split(f"[{re.escape(separators)}]", text)
        found += [(part.strip(), at) for part in parts if part.strip()]
    return found


def definedness_guards(when: Any) -> tuple[frozenset[str], frozenset[str]]:
    """The names a step's ``when`` requires defined (``x is defined``) and undefined (``x is not defined``): each a
    condition that must hold (an item of the list, a part of an ``and``), so the step runs only so."""
    defined: set[str] = set()
    undefined: set[str] = set()
    for condition in when if isinstance(when, list) else [when]:
        if not isinstance(condition, str):
            continue
        try:
            output = parse(condition, False).body[0]
        except (_Syntax, IndexError):
            continue  # reported where the when is checked
        for part in _conjuncts(output.nodes[0]) if isinstance(output, nodes.Output) else []:
            negated = isinstance(part, nodes.Not)
            test = part.node if negated else part
            if not isinstance(test, nodes.Test) or test.name not in ("defined", "undefined"):
                continue
            wants_defined = (test.name == "defined") != negated
            if wants_defined and (root := _root_name(test.node)):
                defined.add(root)  # x.y defined: x is too
            elif not wants_defined and isinstance(test.node, nodes.Name):
                undefined.add(test.node.name)
    return frozenset(defined), frozenset(undefined)


def _conjuncts(node: nodes.Node) -> list[nodes.Node]:
    if isinstance(node, nodes.And):
        return _conjuncts(node.left) + _conjuncts(node.right)
    return [node]


#: what a step's no_log says of the values it reads: secret (True), not (False), or the step whose templated
#: no_log decides when compiling
Hiding = bool | dict[str, Any]


def hiding(no_log: Any, step: dict[str, Any]) -> Hiding:
    return step if is_templated(no_log) else no_log in (True, "yes", "true", "on")


def may_hide(no_log: Any) -> bool:
    """Whether a step's no_log may hide it: true, or a template decided later."""
    return no_log in (True, "yes", "true", "on") or is_templated(no_log)


def own_var_names(data: dict[str, Any]) -> frozenset[str]:
    """The names a task's (or block's) own ``vars`` define: Ansible templates its when, loop and arguments with
    them."""
    own = data.get("vars")
    return frozenset(n for n in own if isinstance(n, str)) if isinstance(own, dict) else frozenset()


ROLE_PATH = re.compile(r"^\{\{-?\s*role_path\s*-?\}\}/+")


def in_role_folder(name: str, folder: str) -> str:
    """``"{{ role_path }}/<folder>/x.yml"`` as ``x.yml``: the same file of the role (nginxinc.nginx names its
    tasks so); any other name as written."""
    rest = ROLE_PATH.sub("", name, count=1)
    if rest != name and rest.startswith(folder + "/"):
        return rest[len(folder) + 1 :]
    return name


def _in_vars(name: str, files: dict[str, Any]) -> str:
    """``name`` relative to the role's vars/: Ansible's search path for a role's include_vars tries the role's
    vars/<name> and then <role>/<name>, so ``vars/Debian.yml`` is vars/Debian.yml too (geerlingguy.mysql)."""
    name = in_role_folder(name, "vars")
    if name.startswith("vars/") and not any(fnmatch.fnmatch(f, ansible.glob_of(name)) for f in files):
        return name[len("vars/") :]
    return name


def _any_found(candidates: list[str], files: dict[str, Any]) -> str:
    """The condition that one of ``candidates`` names a file of ``files``, rendered on the box with its facts."""
    options = ", ".join(ansible.template_to_expression(c) for c in candidates)
    return f"([{options}] | select('in', {sorted(files)!r}) | list | length) > 0"


def _first_found(candidates: list[str], files: dict[str, Any]) -> str:
    """The first candidate that names one of ``files``, as a template the box renders with its facts."""
    if len(candidates) == 1:
        return candidates[0]
    options = ", ".join(ansible.template_to_expression(c) for c in candidates)
    present = sorted(files)
    return (
        "{{ (["
        + options
        + "] | select('in', "
        + repr(present)
        + ") | list + ["
        + ansible.template_to_expression(candidates[-1])
        + "]) | first }}"
    )


#: Ansible's with_<lookup> loops kiln runs with the box's lookup of that name
LOOKUP_LOOPS = {
    "with_subelements": "subelements",
    "with_flattened": "flattened",
    "with_community.general.flattened": "flattened",
}


def _flattened_on_the_box(value: str | list[Any]) -> str:
    """``with_items`` over what the box renders, as Ansible's items lookup gives it: the rendered list flattened
    one level (an item that renders to a list gives its items), a value that is not a list one item."""
    if isinstance(value, list):
        expression = as_expression(value)
    else:
        inner = WHOLE_EXPRESSION.match(value)
        expression = inner.group(1).strip() if inner else ansible.template_to_expression(value)
    given = f"({expression})"
    listed = f"([{given}] if {given} is string or {given} is mapping else {given})"
    return "{{ " + listed + " | flatten(levels=1, skip_nulls=false) }}"


def _index_var(data: dict[str, Any]) -> str:
    control = data.get("loop_control")
    value = control.get("index_var") if isinstance(control, dict) else None
    return value if isinstance(value, str) and IDENTIFIER.match(value) else ""


def _with_applied(block: dict[str, Any], apply: dict[str, Any]) -> dict[str, Any]:
    """include_role's own keywords with ``apply``'s for its tasks: conditions both hold, apply's vars win."""
    out = dict(block)
    for key, value in apply.items():
        if key == "tags":
            continue  # the included tasks' own tags (StepContext), not the include's
        if key == "when" and "when" in out:
            out["when"] = [*_as_list(out["when"]), *_as_list(value)]
        elif key == "vars" and isinstance(out.get("vars"), dict) and isinstance(value, dict):
            out["vars"] = {**out["vars"], **value}
        else:
            out[key] = value
    return out


def as_expression(value: Any) -> str:
    """A Jinja expression giving ``value``, its templated strings rendered natively (as Ansible renders a
    set_fact), so a mapping whose names are templated becomes one expression the box renders whole."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{as_expression(k)}: {as_expression(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(as_expression(v) for v in value) + "]"
    if isinstance(value, str):
        if not is_templated(value):
            return repr(value)
        expression = ansible.template_to_expression(value)
        return f"({expression})" if " ~ " in expression else expression
    return repr(value)  # numbers, True, False, None: Jinja reads Python's spelling


def check_per_task(imported: dict[str, Any]) -> None:
    """An import's or a block's ``when`` as Ansible has it: each task inside checks it when it runs (a task before
    it may change what it reads; a skipped task still registers its skip), not the import or block once."""
    condition = imported.pop("when", None)
    if condition is not None:
        for part in ("block", "rescue", "always"):
            _add_condition(imported.get(part) or [], condition)


def _add_condition(steps: list[dict[str, Any]], condition: Any) -> None:
    for step in steps:
        if step.get("module") == "flush_handlers":
            continue  # meta tasks take no condition in Ansible either
        step["when"] = [*_as_list(condition), *_as_list(step["when"])] if "when" in step else condition
        for part in ("block", "rescue", "always"):
            _add_condition(step.get(part) or [], condition)


def _add_tags(steps: list[dict[str, Any]], tags: list[str]) -> None:
    for step in steps:
        if tags:
            step["tags"] = list(dict.fromkeys([*step.get("tags", []), *tags]))
        for part in ("block", "rescue", "always"):
            _add_tags(step.get(part) or [], tags)


def without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


INHERITED = ("become_user", "environment", "vars", "check_mode")


def inherit_keywords(block: dict[str, Any]) -> None:
    """A block's become_user, environment, vars and check_mode hold for its steps (theirs win)."""
    given = {k: block[k] for k in INHERITED if k in block}
    if not given:
        return
    for key in ("block", "rescue", "always"):
        for inner in block.get(key, []):
            for name, value in given.items():
                if name == "vars" and isinstance(inner.get("vars"), dict):
                    inner["vars"] = {**value, **inner["vars"]}
                else:
                    inner.setdefault(name, value)
            if inner.get("module") == "block":
                inherit_keywords(inner)


def notify_inside(block: dict[str, Any], names: list[str] | None = None) -> None:
    """A block's (or an import's) ``notify`` as Ansible's tasks inherit it: each step inside without a notify of
    its own (a nested block's own notify has reached its steps already) notifies those handlers when it changes."""
    names = block.pop("notify", None) if names is None else names
    if not names:
        return
    for part in ("block", "rescue", "always"):
        for inner in block.get(part, []):
            if inner.get("module") == "block":
                notify_inside(inner, names)
            elif inner.get("module") != "flush_handlers":
                inner.setdefault("notify", list(names))


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("yes", "true", "on", "1"))


def _falsy(value: Any) -> bool:
    return value is False or (isinstance(value, str) and value.lower() in ("no", "false", "off", "0"))


def _src_on_the_box(module: str, args: dict[str, Any]) -> bool:
    """Whether a step's src names a file on the box, not one of the role's: remote_src, or unarchive's older
    spelling of it, copy: false (geerlingguy.git's `unarchive: {src: "{{ workspace }}/git.tar.gz", copy: false}`)."""
    return _truthy(args.get("remote_src")) or (module == "unarchive" and _falsy(args.get("copy")))


def check_args(doc: Document, what: str, schema: dict[str, Any], given: Any, path: tuple[Any, ...]) -> list[Diagnostic]:
    """Validate a module's arguments ``given`` at ``path``; every problem at its key or value."""
    if isinstance(given, dict):
        where = {key: path + (key,) for key in given}
    elif schema.get("free_form") and isinstance(given, str):
        where = {schema["free_form"]: path}
    else:
        where = {}
    return arg_diagnostics(doc, schema, given, where, path, what, what + ".{key}", what + ": {key}")


def arg_diagnostics(
    doc: Document,
    schema: dict[str, Any],
    given: Any,
    where: dict[Any, tuple[Any, ...]],
    path: tuple[Any, ...],
    what: str,
    at_value: str,
    elsewhere: str,
) -> list[Diagnostic]:
    """The engine's verdict on ``given`` as diagnostics: each at the key or value ``where`` places it.

    ``what`` heads whole-mapping and key problems; ``at_value`` (a format with ``{key}``) heads a
    value's problem at its own place, ``elsewhere`` one whose key has no place of its own (a shorthand).
    """
    out: list[Diagnostic] = []
    spec_args: dict[str, Any] = schema.get("args", {})
    alias_of = {alias: name for name, spec in spec_args.items() for alias in spec.get("aliases", [])}
    trapped: set[Any] = set()
    values = given if isinstance(given, dict) else {k: given for k in where}
    for key, value in values.items():
        spec = spec_args.get(alias_of.get(key, key))
        if spec and _yaml11_trap(doc, where.get(key, path), spec, value):
            out.append(doc.diag(where.get(key, path), _yaml11_message(value)))
            trapped.add(key)
    if trapped and not isinstance(given, dict):
        return out
    _, errors = argschema.validate(schema, given)
    suggested = {e.suggestion for e in errors if e.code == Code.UNKNOWN_KEY and e.suggestion}
    for err in errors:
        if err.key is None:
            if not suggested & set(err.names):  # "unknown argument 'pth' (did you mean 'path'?)" already says it
                out.append(doc.diag(path, f"{what}: {err.message}", key=True))
            continue
        key = err.key if err.key in where else next((k for k in where if alias_of.get(k, k) == err.key), err.key)
        if key in trapped:
            continue
        place = where.get(key)
        if place is None or place == path:
            out.append(doc.diag(path, f"{elsewhere.format(key=key)}: {err.message}"))
        elif err.at_key:
            out.append(doc.diag(place, f"{what}: {err.message}", key=True))
        else:
            out.append(doc.diag(place, f"{at_value.format(key=key)}: {err.message}"))
    return out


def _yaml11_trap(doc: Document, path: tuple[Any, ...], spec: dict[str, Any], value: Any) -> bool:
    return (
        spec.get("type", "str") in ("str", "path")
        and isinstance(value, str)
        and value.lower() in YAML11_BOOLS
        and doc.style(path) == PLAIN
    )


def _yaml11_message(value: str) -> str:
    return (
        f"'{value}' unquoted: YAML 1.1 (and Ansible) reads this as a boolean, kiln's YAML 1.2 as the "
        f"string '{value}'; quote it (\"{value}\") to say which you mean"
    )


# --- verify checks ---------------------------------------------------------------------


def compile_checks(
    collector: Collector, checks: Mapping[str, ModuleType], role: str, doc: Document
) -> list[dict[str, Any]]:
    """Validate a verify.yml; return check entries ``{"check", "args", "name", "source", "role"}``."""
    data = doc.data
    if data is None:
        return []
    if not isinstance(data, list):
        collector.add(doc.diag((), f"a verify file is a list of checks (each starting with '- '), got {kind_of(data)}"))
        return []
    out = []
    for index, entry in enumerate(data):
        path = (index,)
        if not isinstance(entry, dict) or not entry:
            collector.add(
                doc.diag(path, f"a check must be a mapping like '- http: http://127.0.0.1/', got {kind_of(entry)}")
            )
            continue
        kinds = [k for k in entry if k in checks]
        if not kinds:
            first = next((k for k in entry if k != "name"), None)
            if first is None:
                collector.add(doc.diag(path, "this check has no kind (e.g. http:, port:, service:)"))
            else:
                collector.add(
                    doc.diag(path + (first,), f"unknown check '{first}'{did_you_mean(first, list(checks))}", key=True)
                )
            continue
        kind = kinds[0]
        schema = checks[kind].SCHEMA
        spec_args = schema.get("args", {})
        alias_of = {alias: name for name, spec in spec_args.items() for alias in spec.get("aliases", [])}
        value = entry[kind]
        siblings = {k: v for k, v in entry.items() if k not in (kind, "name", "on")}
        errors_before = len(collector.diagnostics)
        for key in siblings:
            if key not in spec_args and key not in alias_of:
                message = (
                    f"two checks in one entry: '{kind}' and '{key}' (one check an entry)"
                    if key in checks
                    else f"{kind} check: unknown attribute '{key}'"
                    f"{did_you_mean(key, list(spec_args) + list(alias_of) + ['name', 'on'])}"
                )
                collector.add(doc.diag(path + (key,), message, key=True))
        siblings = {k: v for k, v in siblings.items() if k in spec_args or k in alias_of}
        if isinstance(value, dict):
            args, where = dict(value), {k: path + (kind, k) for k in value}
            overlap = [k for k in siblings if k in value]
            for key in overlap:
                collector.add(doc.diag(path + (key,), f"'{key}' is given twice", key=True))
        elif value is None or value is True:
            args, where = {}, {}
        elif schema.get("free_form") and isinstance(value, (str, int, float, list)) and not isinstance(value, bool):
            args, where = {schema["free_form"]: value}, {schema["free_form"]: path + (kind,)}
        else:
            collector.add(
                doc.diag(
                    path + (kind,),
                    f"{kind} check: expected a mapping of attributes"
                    f"{' or its ' + schema['free_form'] if schema.get('free_form') else ''}"
                    f", got {kind_of(value)}",
                )
            )
            continue
        for key, item in siblings.items():
            args[key] = item
            where[key] = path + (key,)
        # validate with positions: a synthetic mapping whose keys point at their own places
        label = f"{kind} check"
        collector.diagnostics += arg_diagnostics(
            doc, schema, args, where, path + (kind,), label, label + " {key}", label + " {key}"
        )
        name = entry.get("name")
        if "name" in entry and judge("name", name, CHECK_KEYWORDS)[1]:
            collector.add(doc.diag(path + ("name",), f"name must be a string, got {kind_of(name)}"))
            name = None
        if not name:
            name = f"{kind} {_primary(schema, args)}".strip()
        line = doc.value_pos(path)[0]
        check = {"check": kind, "args": args, "name": str(name), "source": f"{doc.display}:{line}", "role": role}
        where_runs = _check_on(collector, doc, entry, path)
        if where_runs != CHECK_ON_DEFAULT:
            check["on"] = where_runs
        if len(collector.diagnostics) == errors_before:
            for key, item in args.items():
                _collect_check_templates(collector, check, doc, where.get(key, path), key, item)
        out.append(check)
    return out


def _check_on(collector: Collector, doc: Document, entry: dict[str, Any], path: tuple[Any, ...]) -> str:
    """Where a check runs: ``build`` (the build machine), ``image`` (a fresh machine from the new image) or both."""
    value = entry.get("on", CHECK_ON_DEFAULT)
    if value in CHECK_ON:
        return value
    collector.add(
        doc.diag(
            path + ("on",),
            f"on must be one of {', '.join(CHECK_ON)}, got {value!r}"
            f"{did_you_mean(value, CHECK_ON) if isinstance(value, str) else ''}",
        )
    )
    return CHECK_ON_DEFAULT


def _collect_check_templates(
    collector: Collector, check: dict[str, Any], doc: Document, path: tuple[Any, ...], key: str, value: Any
) -> None:
    if is_templated(value) or (isinstance(value, (list, dict)) and any_templated(value)):
        collector.check_templates.append((check, doc, path, key))


def any_templated(value: Any) -> bool:
    """Whether ``value`` or anything inside it is templated."""
    if isinstance(value, dict):
        return any(any_templated(v) for v in value.values())
    if isinstance(value, list):
        return any(any_templated(v) for v in value)
    return is_templated(value)


# --- references: expressions, templates, notify ---------------------------------------------
class _Everything(set):
    """A set of names that holds every name (when a role's variables could not be read)."""

    def __contains__(self, item: object) -> bool:
        return True

    def __or__(self, other: Any) -> _Everything:
        return self

    def __rsub__(self, other: Any) -> set:
        return set()


class _Syntax(Exception):
    def __init__(self, message: str, lineno: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.lineno = lineno


def parse(text: str, template: bool) -> nodes.Template:
    """The Jinja AST of a templated value or a bare expression (as the agent evaluates it)."""
    # a value's {{ }} keeps its string literals' backslashes (value_environment), a bare expression does not
    env = value_environment()
    if template:
        source = text
    else:
        match = WHOLE_EXPRESSION.match(text)
        inner = match.group(1) if match else text
        env = env if match else ENV
        try:
            env.compile_expression(inner)
        except jinja2.TemplateSyntaxError as exc:
            raise _Syntax(exc.message or str(exc)) from None
        source = "{{ " + inner + " }}"
    try:
        return env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise _Syntax(exc.message or str(exc), exc.lineno) from None


def _root_name(node: nodes.Node) -> str | None:
    while isinstance(node, (nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Test)):
        node = node.node
    return node.name if isinstance(node, nodes.Name) else None


def _guarded(ast: nodes.Template) -> set[str]:
    """Names the expression itself guards: ``x is defined``, ``x | default(...)``."""
    guarded = set()
    for test in ast.find_all(nodes.Test):
        if test.name in ("defined", "undefined", "none") and (root := _root_name(test.node)):
            guarded.add(root)
    for flt in ast.find_all(nodes.Filter):
        if flt.name in ("default", "d") and flt.node is not None and (root := _root_name(flt.node)):
            guarded.add(root)
    return guarded


def undeclared_names(ast: nodes.Template) -> set[str]:
    """Names a template reads without setting them (jinja2.meta's answer when it can give one).

    jinja2.meta also names what a branch sets before reading it (``{% if %}{% set name, options = ... %}{{ name
    }}``: the code it generates falls back to the context where the other branch did not set it; node_exporter's
    unit template); a name the template sets before it first reads it is its own, not a variable to check."""
    try:
        return set(jinja2.meta.find_undeclared_variables(ast)) - _set_before_read(ast)
    except jinja2.TemplateError:  # the code generator refuses unknown filters/tests: approximate
        stored = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
        if any(True for _ in ast.find_all(nodes.For)):
            stored.add("loop")  # a for loop's own variable, as Jinja's code generator knows it
        if any(True for _ in ast.find_all(nodes.Macro)):
            stored.update({"varargs", "kwargs", "caller"})
        return {n.name for n in ast.find_all(nodes.Name) if n.ctx == "load"} - stored


def _set_before_read(ast: nodes.Template) -> set[str]:
    """Names whose first use, in the order the template runs (a set's value before its target), is a ``set``'s
    (a for's target is its loop's alone: jinja2.meta judges a read after the loop)."""
    first: dict[str, str] = {}

    def walk(node: nodes.Node) -> None:
        if isinstance(node, nodes.Name):
            first.setdefault(node.name, node.ctx)
            return
        if isinstance(node, nodes.Assign):
            walk(node.node)
            walk(node.target)
            return
        if isinstance(node, nodes.For):
            for child in node.iter_child_nodes(exclude=("target",)):
                walk(child)
            return
        for child in node.iter_child_nodes():
            walk(child)

    walk(ast)
    return {name for name, ctx in first.items() if ctx == "store"}


def names_of(ref: Ref) -> set[str]:
    try:
        return undeclared_names(parse(ref.text, ref.template))
    except _Syntax:
        return set()


def ast_problems(ast: nodes.Template, known: set[str] | frozenset[str]) -> list[tuple[str, int | None, str]]:
    """(message, lineno, name) for each undefined name, unknown fact/kiln attribute, filter or test."""
    problems: list[tuple[str, int | None, str]] = []
    guarded = _guarded(ast)
    undeclared = undeclared_names(ast)
    first_line = {}
    for name_node in ast.find_all(nodes.Name):
        first_line.setdefault(name_node.name, name_node.lineno)
    for name in sorted(n for n in undeclared - guarded if n not in known and not n.startswith("ansible_")):
        candidates = sorted(n for n in set(known) if n not in JINJA_GLOBALS)
        problems.append((f"undefined variable '{name}'{did_you_mean(name, candidates)}", first_line.get(name), name))
    for attr_node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if not isinstance(attr_node.node, nodes.Name) or attr_node.node.name not in ("facts", "kiln"):
            continue
        if attr_node.node.name not in known:
            continue
        if isinstance(attr_node, nodes.Getattr):
            attr = attr_node.attr
        elif isinstance(attr_node.arg, nodes.Const) and isinstance(attr_node.arg.value, str):
            attr = attr_node.arg.value
        else:
            continue
        allowed = FACTS if attr_node.node.name == "facts" else KILN_ATTRS
        if attr not in allowed:
            problems.append(
                (
                    f"unknown {'fact' if allowed is FACTS else 'kiln attribute'} "
                    f"'{attr_node.node.name}.{attr}'{did_you_mean(attr, allowed)} "
                    f"(known: {', '.join(allowed)})",
                    attr_node.lineno,
                    attr,
                )
            )
    for item in ast.find_all(nodes.Getitem):
        if (
            isinstance(item.node, nodes.Name)
            and item.node.name == "hostvars"
            and not (isinstance(item.arg, nodes.Name) and item.arg.name == "inventory_hostname")
        ):
            problems.append(
                (
                    "another host's hostvars: a bake has one host (this one); read its own variables "
                    "directly, or pass the other host's values in with kiln.yaml vars or --var",
                    item.lineno,
                    "hostvars",
                )
            )
    for flt in ast.find_all(nodes.Filter):
        if flt.name not in ENV.filters:
            problems.append(
                (f"unknown filter '{flt.name}'{did_you_mean(flt.name, sorted(ENV.filters))}", flt.lineno, flt.name)
            )
    for test in ast.find_all(nodes.Test):
        if test.name not in ENV.tests:
            problems.append(
                (f"unknown test '{test.name}'{did_you_mean(test.name, sorted(ENV.tests))}", test.lineno, test.name)
            )
    return problems


def check_references(
    collector: Collector,
    known: set[str],
    roles: dict[str, RoleTree],
    check_names: bool = True,
    only_at_run_time: frozenset[str] = frozenset(),
) -> None:
    """Phase 2: expressions and templated values, notify names, template files.

    A variable's value may read a loop's variable (``cmd: "ssh-keygen -f {{ user.name }}"``, robertdebock.users):
    Ansible's variables are lazy, rendered where a task reads them, inside the loop that binds it. Only the names
    some loop of the bake binds pass so; any other name in a value is still a typo to report.

    ``only_at_run_time``: names only a vars/ file defines, which include_vars loads per platform when it runs. A
    step whose when says ``x is not defined`` of such a name is the fallback for the platforms whose file lacks
    it (geerlingguy.git sets a variable its vars/ files give, from one defined nowhere): Ansible renders its
    arguments only there, so the names they read are the box's to judge (the step fails if it runs without
    them), not the controller's."""
    if not check_names:
        known = _Everything()
    for ref in collector.refs:
        try:
            ast = parse(ref.text, ref.template)
        except _Syntax as exc:
            what = "template" if ref.template else "expression"
            collector.add(ref.doc.diag(ref.path, f"invalid {what} {ref.text.strip()!r}: {exc.message}"))
            continue
        seen = known | ref.extra
        if ref.role_variable:
            seen = seen | collector.loop_vars
        if ref.fallback_for & only_at_run_time:
            seen = seen | undeclared_names(ast)
        for message, _, _ in ast_problems(ast, seen):
            collector.add(ref.doc.diag(ref.path, message))
    for doc, path, name in collector.notifies:
        if name not in collector.handlers:
            collector.add(
                doc.diag(path, f"notify names no handler '{name}'{did_you_mean(name, list(collector.handlers))}")
            )
    check_template_files(collector, known, roles)


def _parse_template_file(text: str, name: str) -> nodes.Template:
    """A template file read as the box renders it: its ``#jinja2:`` header sets the delimiters; the header's line
    is left empty, so every line keeps its number in the file."""
    body, options = template_options(text)
    return parsing_environment(options).parse(("\n" if text.startswith("#jinja2:") else "") + body, name=name)


def check_template_files(collector: Collector, known: set[str], roles: dict[str, RoleTree]) -> None:
    """Every file in each role's templates/: Jinja syntax, what it includes; undefined names in the
    ones steps use. Only the files the role's tree holds are read: never a link out of the role."""
    used: dict[tuple[str, str], set[str] | None] = {}
    for role, extra in collector.templated_src.items():  # a templated src may name any of them
        for rel in roles[role].under("templates") if role in roles else {}:
            used[(role, rel)] = set(extra)
    for use in collector.template_uses:
        previous = used.get((use.role, use.src))
        used[(use.role, use.src)] = set(use.extra) | (previous or set())
    for role, tree in roles.items():
        templates = tree.under("templates")
        for rel, file in sorted(templates.items()):
            shown = tree.shown(f"templates/{rel}")
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                collector.add(Diagnostic(shown, 1, 1, "a template must be UTF-8 text"))
                continue
            except OSError as exc:
                collector.add(Diagnostic(shown, 1, 1, f"cannot read: {exc.strerror or exc}"))
                continue
            lines = text.splitlines()
            try:
                ast = _parse_template_file(text, rel)
            except TemplateError as exc:
                collector.add(Diagnostic(shown, 1, 1, str(exc), lines[0] if lines else ""))
                continue
            except jinja2.TemplateSyntaxError as exc:
                line = exc.lineno or 1
                source = lines[line - 1] if 0 < line <= len(lines) else ""
                collector.add(Diagnostic(shown, line, 1, f"template syntax error: {exc.message}", source))
                continue
            for message, lineno, name in _loading_problems(ast, set(templates)):
                collector.add(_at_name(shown, lines, lineno, name, message))
            extra = used.get((role, rel))
            if extra is None:
                continue  # no step uses it by a literal name: syntax only
            for message, lineno, name in ast_problems(ast, known | extra):
                collector.add(_at_name(shown, lines, lineno, name, message))


def _at_name(shown: str, lines: list[str], lineno: int | None, name: str, message: str) -> Diagnostic:
    line = lineno or 1
    source = lines[line - 1] if 0 < line <= len(lines) else ""
    found = re.search(r"\b" + re.escape(name) + r"\b", source) or re.search(re.escape(name), source)
    return Diagnostic(shown, line, found.start() + 1 if found else 1, message, source)


def _loading_problems(ast: nodes.Template, templates: set[str]) -> list[tuple[str, int | None, str]]:
    """(message, lineno, name) for each include, import or extends naming no template of the role.

    The names are relative to the role's templates/, as the agent's loader reads them; a name
    computed at render time is left to that loader, which refuses one that leads out.
    """
    problems: list[tuple[str, int | None, str]] = []
    for node in ast.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        names = _literal_names(node.template)
        for name in names:
            if template_path(name) is None:
                problems.append(
                    (
                        f"'{name}' leads out of the role's templates/: include, import and extend "
                        "templates of this role by their path in its templates/",
                        node.lineno,
                        name,
                    )
                )
        inside = [template_path(n) for n in names if template_path(n) is not None]
        if (
            inside
            and len(inside) == len(names)
            and not any(n in templates for n in inside)
            and not getattr(node, "ignore_missing", False)
        ):
            problems.append(
                (
                    f"'{names[0]}' not found in the role's templates/{did_you_mean(names[0], templates)}",
                    node.lineno,
                    names[0],
                )
            )
    return problems


def _literal_names(target: nodes.Expr) -> list[str]:
    if isinstance(target, nodes.Const) and isinstance(target.value, str):
        return [target.value]
    if isinstance(target, (nodes.List, nodes.Tuple)):
        return [item.value for item in target.items if isinstance(item, nodes.Const) and isinstance(item.value, str)]
    return []
