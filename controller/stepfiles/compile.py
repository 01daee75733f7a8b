"""Compile a role (and the roles it depends on) into the agent's bundle.

``compile_role`` loads ``playbooks/roles/<role>/`` and its dependencies, validates
everything in one pass (raising :class:`~controller.model.InvalidInput` with *every*
problem), and returns a :class:`~controller.model.CompiledRole`; ``bundle_json``
turns that into ``bundle.json`` (docs/internals.md).

Roles that ``include_role``/``import_role`` name are loaded like dependencies (validate.py
compiles their tasks in place) and are part of ``chain``, before the roles of the dependency chain.

Variables, lowest to highest precedence: role defaults < role.yml vars < ``kiln.yaml`` ``vars``
< vars/ files < ``--var k=v``, each role's tasks seeing them as Ansible shows them (:class:`Scopes`):
its own defaults over another role's, and a private ``include_role``'s variables its tasks' only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.agent import checks as agent_checks
from kiln.agent import modules as agent_modules
from kiln.agent.plugins import ByName
from kiln.agent.templating import render
from kiln.controller.config import PROVIDERS, Config
from kiln.controller.declared import check_document
from kiln.controller.model import CompiledRole, Diagnostic, InvalidInput
from kiln.controller.publish_settings import PUBLISH_SECTION
from kiln.controller.stepfiles.keywords import CONTROL_KEYS
from kiln.controller.stepfiles.loader import Document, RoleTree, display_path, load_yaml, scan_role
from kiln.controller.stepfiles.validate import (
    BUILTIN_NAMES,
    DEPENDENCY_KEYS,
    IDENTIFIER,
    JINJA_GLOBALS,
    RESERVED_NAMES,
    Collector,
    Ref,
    RoleUse,
    StepCompiler,
    any_templated,
    check_references,
    compile_checks,
    did_you_mean,
    is_templated,
    kind_of,
)

ROLE_KEYS = ("description", "depends", "defaults", "vars", "base", "publish")  # publish: controller/consumers
ROLE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
STEP_FILES = ("role.yml", "steps.yml", "handlers.yml", "verify.yml", "tasks/main.yml", "meta/main.yml")
META_KEYS = ("dependencies", "galaxy_info", "allow_duplicates", "argument_specs", "collections")


@dataclass
class RoleSource:
    """One role's files as read (documents are None for files that are absent)."""

    name: str
    dir: Path
    tree: RoleTree
    meta_doc: Document | None = None
    steps_doc: Document | None = None
    handlers_doc: Document | None = None
    verify_doc: Document | None = None
    description: str = ""
    depends: list[str] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)
    ansible_meta_doc: Document | None = None  # meta/main.yml
    defaults_doc: Document | None = None  # defaults/main.yml
    vars_doc: Document | None = None  # vars/main.yml
    # each file read for defaults/main and vars/main (main.yml, or every file of a main/ directory) with its values
    defaults_docs: list[tuple[Document | None, dict[str, Any]]] = field(default_factory=list)
    vars_docs: list[tuple[Document | None, dict[str, Any]]] = field(default_factory=list)
    ansible_vars: dict[str, Any] = field(default_factory=dict)  # vars/main.yml: above kiln.yaml, as in Ansible
    vars_files: dict[str, dict[str, Any]] = field(default_factory=dict)  # vars/*.yml for include_vars
    dep_refs: list[tuple[Document, tuple[Any, ...]]] = field(default_factory=list)  # where each of depends is


def agent_modules_by_name() -> ByName:
    """The agent's modules by name, as its ``discover()`` names them, each imported when a step first names it: a
    role names a few of the ~60 (web: 5 modules, 5 checks); importing every one cost ~25 ms of each compile.
    tests/test_compile_cache.py holds it equal to discover()."""
    return ByName(agent_modules.__name__, agent_modules.__path__)


def agent_checks_by_name() -> ByName:
    return ByName(agent_checks.__name__, agent_checks.__path__)


# --- helpers others call ------------------------------------------------------------------
def parse_var_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["k=v", ...]`` (from ``--var``) to ``{"k": "v"}``; values stay strings."""
    out: dict[str, Any] = {}
    problems = []
    for position, item in enumerate(items or [], 1):
        name, sep, value = str(item).partition("=")
        name = name.strip()
        if not sep or not IDENTIFIER.match(name):
            problems.append(Diagnostic("--var", 1, position, f"expected NAME=VALUE, got '{item}'"))
        elif name in RESERVED_NAMES:
            problems.append(Diagnostic("--var", 1, position, f"'{name}' is reserved and cannot be set"))
        else:
            out[name] = value
    if problems:
        raise InvalidInput(problems)
    return out


def list_roles(playbooks_dir: Path) -> list[str]:
    """Every role under ``roles/``: a folder with one of STEP_FILES (validate, bake and nightly agree)."""
    roles_dir = Path(playbooks_dir) / "roles"
    if not roles_dir.is_dir():
        message = "no roles directory: a role is roles/<role>/ with role.yml or steps.yml"
        raise InvalidInput([Diagnostic(display_path(roles_dir), 1, 1, message)])
    return sorted(p.name for p in roles_dir.iterdir() if p.is_dir() and any((p / f).is_file() for f in STEP_FILES))


def resolve_variables(
    variables: dict[str, Any], extra: dict[str, Any] | None = None, passes: int = 5
) -> dict[str, Any]:
    """Render variables whose values template other variables, where the controller can.

    Values that need what only the box knows (``facts``, registered results) stay as
    written.
    """
    scope = dict(variables)
    scope.update(extra or {})
    for _ in range(passes):
        changed = False
        for name, value in list(scope.items()):
            if not any_templated(value):
                continue
            try:
                rendered = render(value, scope)
            except Exception:  # noqa: BLE001 - whatever a value's Jinja does, it stays as written
                continue
            if rendered != value:
                scope[name] = rendered
                changed = True
        if not changed:
            break
    return scope


# --- loading roles --------------------------------------------------------------------------
def _load(tree: RoleTree, name: str, problems: list[Diagnostic]) -> Document | None:
    if name not in tree.files:  # absent, or refused: a link out of the role is never read
        return None
    try:  # Ansible's layout is read as Ansible reads it: YAML 1.1
        return load_yaml(tree.dir / name, yaml11="/" in name)
    except InvalidInput as exc:
        problems.extend(exc.diagnostics)
        return None


def _load_role(roles_dir: Path, name: str, problems: list[Diagnostic]) -> RoleSource:
    tree = scan_role(roles_dir / name)
    problems.extend(tree.problems)
    src = RoleSource(name=name, dir=roles_dir / name, tree=tree)
    src.meta_doc = _load(tree, "role.yml", problems)
    src.steps_doc = _load(tree, "steps.yml", problems)
    src.handlers_doc = _load(tree, "handlers.yml", problems)
    src.verify_doc = _load(tree, "verify.yml", problems)
    _load_ansible_layout(src, problems)
    doc = src.meta_doc
    if doc is None or doc.data is None:
        return src
    data = doc.data
    if not isinstance(data, dict):
        problems.append(doc.diag((), f"role.yml must be a mapping of {', '.join(ROLE_KEYS)}, got {kind_of(data)}"))
        return src
    for key in data:
        if key not in ROLE_KEYS:
            problems.append(doc.diag((key,), f"unknown role setting '{key}'{did_you_mean(key, ROLE_KEYS)}", key=True))
    if data.get("publish") is not None:  # what bake and promote act on, judged here so validate reports it too
        _, found = check_document(
            PUBLISH_SECTION, data["publish"], lambda at, m, key: doc.diag(at, m, key=key), ("publish",)
        )
        problems.extend(found)
    description = data.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        problems.append(doc.diag(("description",), f"description must be a string, got {kind_of(description)}"))
    else:
        src.description = description.strip()
    depends = data.get("depends") or []
    if isinstance(depends, str):
        depends = [depends]
    if not isinstance(depends, list):
        problems.append(doc.diag(("depends",), f"depends must be a list of role names, got {kind_of(depends)}"))
        depends = []
    for index, dep in enumerate(depends):
        if not isinstance(dep, str) or not ROLE_NAME.match(dep):
            problems.append(doc.diag(("depends", index), f"depends lists role names, got {dep!r}"))
        else:
            src.depends.append(dep)
            src.dep_refs.append((doc, ("depends", index)))
    for key in ("defaults", "vars"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            problems.append(doc.diag((key,), f"{key} must be a mapping of variables, got {kind_of(value)}"))
            continue
        for var in value:
            if not IDENTIFIER.match(var):
                problems.append(
                    doc.diag((key, var), f"variable name '{var}' is not an identifier (letters, digits, _)", key=True)
                )
            elif var in RESERVED_NAMES:
                problems.append(doc.diag((key, var), f"'{var}' is reserved and cannot be a variable", key=True))
        setattr(src, key, dict(value))
    base = data.get("base")
    if base is not None:
        if not isinstance(base, dict):
            problems.append(
                doc.diag(
                    ("base",),
                    "base must map providers to base images "
                    '(local: "localhost/kiln-base/debian:bookworm"), '
                    f"got {kind_of(base)}",
                )
            )
        else:
            for provider, spec in base.items():
                if provider not in PROVIDERS:
                    problems.append(
                        doc.diag(
                            ("base", provider),
                            f"unknown provider '{provider}'{did_you_mean(provider, PROVIDERS)}",
                            key=True,
                        )
                    )
                elif not isinstance(spec, (str, dict)) or not spec:
                    problems.append(
                        doc.diag(
                            ("base", provider),
                            "a base image is an image reference or a mapping "
                            f"(e.g. ssm_parameter: ...), got {kind_of(spec)}",
                        )
                    )
                else:
                    src.base[provider] = spec
    return src


def _load_ansible_layout(src: RoleSource, problems: list[Diagnostic]) -> None:
    """Ansible's role layout: tasks/, handlers/, defaults/, vars/ and meta/ main.yml, and vars/*.yml."""
    tree = src.tree
    if src.steps_doc is None:
        src.steps_doc = _load(tree, "tasks/main.yml", problems) or _load(tree, "tasks/main.yaml", problems)
    if src.handlers_doc is None:
        src.handlers_doc = _load(tree, "handlers/main.yml", problems) or _load(tree, "handlers/main.yaml", problems)
    src.defaults_docs = _main_variables(tree, "defaults", problems)
    src.defaults_doc = src.defaults_docs[0][0]
    for _, values in src.defaults_docs:
        src.defaults.update(values)
    src.vars_docs = _main_variables(tree, "vars", problems)
    src.vars_doc = src.vars_docs[0][0]
    src.ansible_vars = {name: value for _, values in src.vars_docs for name, value in values.items()}
    for rel in sorted(tree.under("vars")):
        if rel.endswith((".yml", ".yaml", ".json")) and "/" not in rel:
            doc = src.vars_doc if rel == "main.yml" else _load(tree, f"vars/{rel}", problems)
            src.vars_files[rel] = _variables(doc, problems)
    src.ansible_meta_doc = _load(tree, "meta/main.yml", problems)
    _dependencies(src, problems)


def _main_variables(
    tree: RoleTree, folder: str, problems: list[Diagnostic]
) -> list[tuple[Document | None, dict[str, Any]]]:
    """``<folder>/main``'s variables, file by file, as Ansible's DataLoader finds them: a ``main/`` directory
    first (every YAML/JSON or extensionless file in it and below, by name, each directory's entries sorted,
    hidden files and ``~`` backups left out; a later file's variable wins), else main.yml."""
    inside = [
        rel
        for rel in tree.under(f"{folder}/main")
        if not any(part.startswith(".") or part.endswith("~") for part in rel.split("/"))
        and os.path.splitext(rel)[1] in ("", ".yml", ".yaml", ".json")
    ]
    if not inside:
        doc = _load(tree, f"{folder}/main.yml", problems)
        return [(doc, _variables(doc, problems))]
    docs = [_load(tree, f"{folder}/main/{rel}", problems) for rel in sorted(inside, key=lambda rel: rel.split("/"))]
    return [(doc, _variables(doc, problems)) for doc in docs]


def _variables(doc: Document | None, problems: list[Diagnostic]) -> dict[str, Any]:
    if doc is None or doc.data is None:
        return {}
    if not isinstance(doc.data, dict):
        problems.append(doc.diag((), f"a variables file is a mapping of names to values, got {kind_of(doc.data)}"))
        return {}
    out = {}
    for var, value in doc.data.items():
        if not IDENTIFIER.match(var):
            problems.append(
                doc.diag((var,), f"variable name '{var}' is not an identifier (letters, digits, _)", key=True)
            )
        elif var in RESERVED_NAMES:
            problems.append(doc.diag((var,), f"'{var}' is reserved and cannot be a variable", key=True))
        else:
            out[var] = _decrypted(doc, (var,), value, problems)
    return out


def _decrypted(doc: Document, path: tuple[Any, ...], value: Any, problems: list[Diagnostic]) -> Any:
    """``value`` with every ``!vault`` scalar in it decrypted (a problem where that cannot be done)."""
    from kiln.controller import vault

    if isinstance(value, dict):
        return {k: _decrypted(doc, path + (k,), v, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_decrypted(doc, path + (i,), v, problems) for i, v in enumerate(value)]
    if path not in doc.vaulted:
        return value
    try:
        return vault.VaultSecret(vault.decrypt(value))
    except vault.VaultError as exc:
        problems.append(doc.diag(path, str(exc)))
        return ""


def _dependencies(src: RoleSource, problems: list[Diagnostic]) -> None:
    doc = src.ansible_meta_doc
    if doc is None or doc.data is None:
        return
    if not isinstance(doc.data, dict):
        problems.append(
            doc.diag((), f"meta/main.yml must be a mapping (dependencies, galaxy_info), got {kind_of(doc.data)}")
        )
        return
    deps = doc.data.get("dependencies") or []
    if not isinstance(deps, list):
        problems.append(doc.diag(("dependencies",), f"dependencies must be a list of roles, got {kind_of(deps)}"))
        return
    for index, dep in enumerate(deps):
        name = dep
        if isinstance(dep, dict):
            for key in dep:
                if key not in DEPENDENCY_KEYS and (key in CONTROL_KEYS or not IDENTIFIER.match(str(key))):
                    problems.append(
                        doc.diag(
                            ("dependencies", index, key),
                            f"dependency setting '{key}' is not supported: a dependency takes when, vars, "
                            "tags and role parameters (variables for its tasks)",
                            key=True,
                        )
                    )
            name = dep.get("role") or dep.get("name")
        if not isinstance(name, str) or not ROLE_NAME.match(name.split(".")[-1]):
            problems.append(doc.diag(("dependencies", index), f"a dependency is a role name, got {name!r}"))
            continue
        src.depends.append(name)  # its folder: role_folder (as written, or its last part)
        src.dep_refs.append((doc, ("dependencies", index)))


def role_folder(roles_dir: Path, name: str) -> str | None:
    """The folder of roles/ a task or dependency means by ``name``: as written (``geerlingguy.nginx``, as
    ansible-galaxy installs it), else its last part (``nginx``, ``devsec.hardening.ssh_hardening``)."""
    for folder in (name, name.split(".")[-1]):
        if ROLE_NAME.match(folder) and folder not in (".", "..") and (Path(roles_dir) / folder).is_dir():
            return folder
    return None


class RoleCatalog:
    """The roles of playbooks/roles/ that include_role/import_role name, each loaded once (the chain's
    roles are already loaded): the :class:`~controller.stepfiles.validate.RoleFinder` of a compile."""

    def __init__(self, roles_dir: Path, sources: dict[str, RoleSource], chain: list[str], problems: list[Diagnostic]):
        self.roles_dir = Path(roles_dir)
        self.sources = sources
        self.problems = problems
        self.already_ran = set(chain)

    def find(self, name: str) -> RoleSource | None:
        folder = role_folder(self.roles_dir, name)
        if folder is None:
            return None
        if folder not in self.sources:
            self.sources[folder] = _load_role(self.roles_dir, folder, self.problems)
        return self.sources[folder]

    def names(self) -> list[str]:
        return list_roles(self.roles_dir.parent)

    def ran(self, name: str) -> bool:
        return name in self.already_ran

    def mark_ran(self, name: str) -> None:
        self.already_ran.add(name)


def _resolve_chain(
    playbooks_dir: Path, role: str, problems: list[Diagnostic]
) -> tuple[list[str], dict[str, RoleSource], dict[str, tuple[Document, tuple[Any, ...]]]]:
    """Dependencies first (depth first, each once), the role last; cycles reported with their chain. Also
    where each dependency is first listed (its when, vars, tags and role parameters)."""
    roles_dir = Path(playbooks_dir) / "roles"
    available = list_roles(playbooks_dir)
    if not ROLE_NAME.match(role) or not (roles_dir / role).is_dir():
        raise InvalidInput(
            [
                Diagnostic(
                    display_path(roles_dir / role),
                    1,
                    1,
                    f"no role '{role}' in {display_path(roles_dir)}{did_you_mean(role, available)}",
                )
            ]
        )
    chain: list[str] = []
    sources: dict[str, RoleSource] = {}
    listed: dict[str, tuple[Document, tuple[Any, ...]]] = {}  # each dependency's first listing (its settings)

    def visit(name: str, stack: list[str], ref: tuple[Document, tuple[Any, ...]] | None) -> None:
        folder = role_folder(roles_dir, name) if stack else name
        if folder is None:
            if ref:
                problems.append(ref[0].diag(ref[1], f"unknown role '{name}'{did_you_mean(name, available)}"))
            return
        name = folder
        if name in stack:
            cycle = " -> ".join(stack[stack.index(name) :] + [name])
            if ref:
                problems.append(ref[0].diag(ref[1], f"dependency cycle: {cycle}"))
            return
        if name in sources:
            return
        src = _load_role(roles_dir, name, problems)
        sources[name] = src
        if ref is not None:
            listed[name] = ref
        for dep, ref in zip(src.depends, src.dep_refs, strict=True):
            visit(dep, stack + [name], ref)
        chain.append(name)

    visit(role, [], None)
    return chain, sources, listed


# --- compiling --------------------------------------------------------------------------------
def _filter_tags(steps: list[dict[str, Any]], tags: set[str], skip: set[str]) -> list[dict[str, Any]]:
    out = []
    for step in steps:
        own = set(step.get("tags", []))
        if own & skip:
            continue
        if step.get("module") == "block":
            kept = dict(step)
            for key in ("block", "rescue", "always"):
                kept[key] = _filter_tags(step.get(key, []), tags, skip)
            if kept["block"] or kept["always"]:
                out.append(kept)
            continue
        if tags and "all" not in tags:
            if not (own & tags) and "always" not in own:
                continue
        elif "never" in own and "never" not in tags:
            continue
        out.append(step)
    return out


def _role_files(src: RoleSource) -> dict[str, bytes]:
    out = {}
    for folder in ("files", "templates"):
        for rel, path in sorted(src.tree.under(folder).items()):
            out[f"{folder}/{src.name}/{rel}"] = path.read_bytes()
    for rel, values in sorted(src.vars_files.items()):  # read (and decrypted) here: JSON for include_vars
        out[f"vars/{src.name}/{rel}"] = json.dumps(values, default=str).encode()
    return out


def _content_hash(
    sources: dict[str, RoleSource], chain: list[str], variables: dict[str, Any], provider: str, selection: list[str]
) -> str:
    from kiln.controller.agent_build import agent_version

    digest = hashlib.sha256()
    entries = []
    for name in chain:
        for rel, path in sources[name].tree.files.items():
            if "__pycache__" not in rel.split("/"):
                entries.append((f"{name}/{rel}", path.read_bytes()))
    for rel, data in sorted(entries):
        digest.update(b"file\0" + rel.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    digest.update(b"vars\0" + json.dumps(variables, sort_keys=True, default=str).encode())
    digest.update(b"agent\0" + agent_version().encode())
    digest.update(b"provider\0" + provider.encode())
    if selection:
        digest.update(b"tags\0" + json.dumps(selection).encode())
    return digest.hexdigest()


def _string_leaves(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _string_leaves(v)]
    if isinstance(value, list):
        return [s for v in value for s in _string_leaves(v)]
    if value is None or isinstance(value, bool):
        return []
    text = str(value)
    return [text] if text else []


def _compile(
    playbooks_dir: Path,
    role: str,
    provider: str,
    config: Config,
    overrides: dict[str, Any] | None,
    tags: list[str] | None,
    skip_tags: list[str] | None,
    want_hash: bool,
    check_mode: bool = False,
) -> CompiledRole:
    playbooks_dir = Path(playbooks_dir)
    problems: list[Diagnostic] = []
    chain, sources, listed = _resolve_chain(playbooks_dir, role, problems)
    collector = Collector(diagnostics=problems, roles=RoleCatalog(playbooks_dir / "roles", sources, chain, problems))
    modules = agent_modules_by_name()
    checks_available = agent_checks_by_name()

    steps: list[dict[str, Any]] = []
    for name in chain:
        src = sources[name]
        collector.vars_files[name] = src.vars_files
        if src.steps_doc is not None:
            own = StepCompiler(collector, modules, name, src.dir, src.steps_doc, src.tree).compile_file()
            steps += _with_dependency_settings(collector, modules, sources, listed.get(name), own)
    handlers: list[dict[str, Any]] = []
    for name in chain:
        src = sources[name]
        if src.handlers_doc is not None:
            handlers += StepCompiler(collector, modules, name, src.dir, src.handlers_doc, src.tree).compile_file(
                handlers=True
            )
    handlers += _included_handlers(collector, modules, chain, sources, problems)
    handlers = _last_loaded(handlers)
    included_roles = list(dict.fromkeys(use.name for use in collector.role_uses if use.name not in chain))
    roles = included_roles + chain  # every role whose files, variables and templates the bake uses
    checks: list[dict[str, Any]] = []
    main_uses = {use.name for use in collector.role_uses if use.main}
    for name in [n for n in included_roles if n in main_uses] + chain:
        src = sources[name]
        if src.verify_doc is not None:
            checks += compile_checks(collector, checks_available, name, src.verify_doc)

    # variables: defaults < role.yml vars < kiln.yaml < vars/ < --var, each role's tasks seeing its own (Scopes)
    own, layers = _own_layers(collector.role_uses, chain, sources, problems)
    scopes = _role_scopes(
        role, chain, sources, own, collector.role_uses, playbooks_dir / "roles", config.vars, overrides
    )
    variables = scopes.public
    everything = scopes.everything()
    for key in overrides or {}:
        if not IDENTIFIER.match(str(key)) or key in RESERVED_NAMES:
            problems.append(Diagnostic("--var", 1, 1, f"'{key}' cannot be set as a variable"))

    included = {var for name in roles for values in sources[name].vars_files.values() for var in values}
    known = set(everything) | collector.registers | set(BUILTIN_NAMES) | included | collector.params
    var_refs: list[tuple[Document, tuple[Any, ...], Any]] = []
    for name in roles:
        src = sources[name]
        if src.meta_doc is not None:
            for section in ("defaults", "vars"):
                for var, value in getattr(src, section).items():
                    var_refs.append((src.meta_doc, (section, var), value))
    for layer in layers:
        for doc, values in layer.docs:
            if doc is not None and isinstance(doc.data, dict):
                var_refs += [(doc, (var,), value) for var, value in values.items() if var in doc.data]
    if config.document is not None:
        for var, value in config.vars.items():
            var_refs.append((config.document, ("vars", var), value))
    for doc, path, value in var_refs:
        _collect_var_refs(collector, doc, path, value)
    # where each variable's value in effect is written, for the agent's messages about it
    var_sources = {
        path[-1]: f"{doc.display}:{doc.value_pos(path)[0]}"
        for doc, path, value in var_refs
        if path[-1] in everything and everything[path[-1]] is value
    }
    # a role.yml that did not load leaves its variables unknown: do not guess at undefined names then
    unreadable = any(
        d.file.endswith(("role.yml", "defaults/main.yml", "vars/main.yml"))
        or "/defaults/main/" in d.file
        or "/vars/main/" in d.file
        for d in problems
    )
    only_at_run_time = frozenset(included - set(everything) - collector.params)  # a vars/ file's, per platform
    trees = {name: sources[name].tree for name in roles}
    check_references(collector, known, trees, check_names=not unreadable, only_at_run_time=only_at_run_time)

    resolved = resolve_variables(everything, {"kiln": {"role": role}})
    runtime = collector.registers | included  # what set_fact, register and include_vars set on the box
    seen_by = scopes.resolver(role)
    for check, doc, path, key in collector.check_templates:
        try:
            rendered = render(check["args"][key], seen_by(check.get("role")))
            if not _names_behind(_undeclared_in(check["args"][key]), everything) & runtime:
                check["args"][key] = rendered  # else the box renders it, with the values the apply left
        except Exception as exc:  # noqa: BLE001 - reported, never a traceback
            # facts and kiln.version (directly or through a variable) exist only on the box:
            # every name is known, so the agent renders the value at verify time
            # Ansible's names (ansible_facts, ansible_os_family...) are the box's, as in steps
            unknown = {n for n in _undeclared_in(check["args"][key]) - known if not n.startswith("ansible_")}
            if unknown:
                problems.append(doc.diag(path, f"cannot render this check value: {exc}"))
    for check in checks:
        if is_templated(check["name"]) and not _names_behind(_undeclared_in(check["name"]), everything) & runtime:
            try:
                check["name"] = str(render(check["name"], seen_by(check.get("role"))))
            except Exception:  # noqa: BLE001 - the name stays as written (the box renders it)
                pass

    for step, doc, path, flag in collector.templated_flags:  # ignore_errors: "{{ ansible_check_mode }}"
        if flag == "no_log":
            _decide_no_log(step, seen_by, _runtime_behind(runtime, everything), check_mode)
            continue
        try:
            rendered = render(step["ignore_errors"], {**resolved, "ansible_check_mode": check_mode})
        except Exception as exc:  # noqa: BLE001 - reported, never a traceback
            problems.append(doc.diag(path, f"cannot decide ignore_errors here: {exc}"))
            continue
        step["ignore_errors"] = rendered is True or str(rendered).strip().lower() in ("true", "yes", "on", "1")
    for step, names in collector.maybe_secret:  # a templated no_log that hides its step: secrets as any no_log's
        if step.get("no_log") is not False:
            collector.no_log_names.update(names)
    _render_names(steps + handlers, seen_by, _runtime_behind(runtime, everything))
    if problems:
        unique = list(dict.fromkeys(problems))
        raise InvalidInput(sorted(unique, key=lambda d: (d.file, d.line, d.column)))

    selected = set(tags or [])
    skipped = set(skip_tags or [])
    steps = _filter_tags(steps, selected, skipped)  # also drops `never` steps when not asked for

    base: dict[str, Any] = {}
    for name in chain:
        base.update(sources[name].base)
    files: dict[str, bytes] = {}
    for name in roles:
        files.update(_role_files(sources[name]))
    secret_names = _names_behind(collector.no_log_names, variables)
    no_log_values = sorted({s for n in secret_names if n in resolved for s in _string_leaves(resolved[n])})
    no_log_values = sorted(set(no_log_values) | _vault_values(variables, sources, roles))
    selection = sorted(f"+{t}" for t in selected) + sorted(f"-{t}" for t in skipped)
    content_hash = _content_hash(sources, roles, variables, provider, selection) if want_hash else ""
    compiled = CompiledRole(
        role=role,
        chain=roles,
        description=sources[role].description,
        steps=steps,
        handlers=handlers,
        checks=checks,
        variables=variables,
        files=files,
        base=base,
        content_hash=content_hash,
        no_log_values=no_log_values,
    )
    compiled.var_sources = var_sources  # type: ignore[attr-defined]  # not a field (a shared contract)
    compiled.role_vars = scopes.own  # type: ignore[attr-defined]  # likewise
    return compiled


def _with_dependency_settings(
    collector: Collector,
    modules: dict[str, Any],
    sources: dict[str, RoleSource],
    listing: tuple[Document, tuple[Any, ...]] | None,
    steps: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """A chain role's steps, in a block with the settings its first listing gives (validate.py)."""
    if listing is None:
        return steps
    doc, path = listing
    dependent = next(s for s in sources.values() if doc in (s.ansible_meta_doc, s.meta_doc))
    compiler = StepCompiler(collector, modules, dependent.name, dependent.dir, doc, dependent.tree)
    return compiler.with_dependency_settings(path, steps)


@dataclass
class RoleLayer:
    """What one role, or one include_role/import_role of it, adds to the bake's variables."""

    defaults: dict[str, Any] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)  # role.yml vars: below kiln.yaml
    ansible_vars: dict[str, Any] = field(default_factory=dict)  # vars/main.yml or vars_from: above kiln.yaml
    docs: list[tuple[Document | None, dict[str, Any]]] = field(default_factory=list)  # where values were written


def _layer(src: RoleSource) -> RoleLayer:
    docs = src.defaults_docs or [(src.defaults_doc, src.defaults)]
    docs += src.vars_docs or [(src.vars_doc, src.ansible_vars)]
    return RoleLayer(src.defaults, src.vars, src.ansible_vars, docs)


def _own_layers(
    uses: list[RoleUse], chain: list[str], sources: dict[str, RoleSource], problems: list[Diagnostic]
) -> tuple[dict[str, RoleLayer], list[RoleLayer]]:
    """Each role's own variables: the chain's roles their main.yml files; the roles include_role/import_role
    bring in their main.yml files unless a use names other files, and the ``defaults_from``/``vars_from``
    files asked for (above main: a file a task names is meant for the tasks it brings in). Also every layer
    read, for where each value is written."""
    own = {name: _layer(sources[name]) for name in chain}
    layers = list(own.values())
    loaded = {(name, part) for name in chain for part in ("defaults", "vars")}  # main.yml files already in
    named: list[tuple[str, RoleLayer]] = []
    for use in uses:
        src = sources[use.name]
        mine = own.setdefault(use.name, RoleLayer())
        for setting, part in (("defaults_from", "defaults"), ("vars_from", "vars")):
            rel = getattr(use, setting)
            if rel:
                doc = _load(src.tree, rel, problems)
                values = _variables(doc, problems)
                layer = RoleLayer(**{"defaults" if part == "defaults" else "ansible_vars": values})
                named.append((use.name, layer))
                layer.docs.append((doc, values))
            elif (use.name, part) not in loaded:
                loaded.add((use.name, part))
                values = src.defaults if part == "defaults" else src.ansible_vars
                layer = (
                    RoleLayer(defaults=values) if part == "defaults" else RoleLayer(vars=src.vars, ansible_vars=values)
                )
                _merge_layer(mine, layer)
                layer.docs += (src.defaults_docs if part == "defaults" else src.vars_docs) or [(None, values)]
            else:
                continue
            layers.append(layer)
    for name, layer in named:
        _merge_layer(own[name], layer)
    return own, layers


def _merge_layer(into: RoleLayer, layer: RoleLayer) -> None:
    into.defaults = {**into.defaults, **layer.defaults}
    into.vars = {**into.vars, **layer.vars}
    into.ansible_vars = {**into.ansible_vars, **layer.ansible_vars}


@dataclass
class Scopes:
    """The variables each role's tasks see, as ansible-core 2.19 gives them (DEFAULT_PRIVATE_ROLE_VARS false).

    ``public``: what every task sees (the bundle's ``vars``): the defaults, then the vars, of the baked role
    with its dependencies and of every public role (import_role, ``include_role`` with ``public: true``).
    ``own``: for each role, the names its own tasks see otherwise: above the public defaults, the defaults of
    its dependencies, of the roles that brought it in (dependency chain) and its own; above the public vars,
    those of the roles that brought it in, of its dependencies and its own. So a role's own defaults win over
    another role's for its tasks, and a private include_role's defaults and vars are its tasks' only.
    kiln.yaml's vars sit between defaults and vars, ``--var`` above all (as inventory and extra vars do).
    """

    public: dict[str, Any]
    own: dict[str, dict[str, Any]]

    def everything(self) -> dict[str, Any]:
        """Every name some task sees (the public value where there is one): for checks made when compiling."""
        merged = dict(self.public)
        for values in self.own.values():
            for name, value in values.items():
                merged.setdefault(name, value)
        return merged

    def resolver(self, role: str) -> Any:
        """``resolve(step_role)``: the variables a role's tasks see, rendered where the controller can."""
        cache: dict[str, dict[str, Any]] = {}

        def resolve(step_role: str | None) -> dict[str, Any]:
            key = step_role or ""
            if key not in cache:
                cache[key] = resolve_variables({**self.public, **self.own.get(key, {})}, {"kiln": {"role": role}})
            return cache[key]

        return resolve


def _role_scopes(
    role: str,
    chain: list[str],
    sources: dict[str, RoleSource],
    own: dict[str, RoleLayer],
    uses: list[RoleUse],
    roles_dir: Path,
    config_vars: dict[str, Any],
    overrides: dict[str, Any] | None,
) -> Scopes:
    deps = {
        name: [f for f in (role_folder(roles_dir, d) for d in sources[name].depends) if f in own and f != name]
        for name in own
    }
    brought_by: dict[str, str] = {}  # the role whose dependency or include brought each role in first
    for name in chain:
        for dep in deps[name]:
            brought_by.setdefault(dep, name)
    for use in uses:
        if use.by and use.by != use.name:
            brought_by.setdefault(use.name, use.by)
    brought_by.pop(role, None)
    public_roles = [role]
    public_roles += [u.name for u in uses if u.kind == "import_role" and u.public is not False]
    public_roles += [u.name for u in uses if u.kind == "include_role" and u.public]

    def merged(names: list[str], tier: str) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in names:
            values.update(getattr(own[name], tier))
        return values

    with_deps = [n for p in dict.fromkeys(public_roles) for n in [*_all_deps(p, deps), p]]
    public_tiers = {tier: merged(with_deps, tier) for tier in ("defaults", "vars", "ansible_vars")}

    def view(tiers: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {**tiers["defaults"], **tiers["vars"], **config_vars, **tiers["ansible_vars"], **(overrides or {})}

    public = view(public_tiers)
    scoped: dict[str, dict[str, Any]] = {}
    for name in own:
        parents, below = _parents(name, brought_by), _all_deps(name, deps)
        tiers = {
            "defaults": {**public_tiers["defaults"], **merged(below + parents + [name], "defaults")},
            "vars": {**public_tiers["vars"], **merged(below + parents + [name], "vars")},
            "ansible_vars": {**public_tiers["ansible_vars"], **merged(parents + below + [name], "ansible_vars")},
        }
        differs = {k: v for k, v in view(tiers).items() if k not in public or public[k] is not v}
        if differs:
            scoped[name] = differs
    return Scopes(public, scoped)


def _all_deps(name: str, deps: dict[str, list[str]], seen: frozenset[str] = frozenset()) -> list[str]:
    """``name``'s dependencies, each after its own (Ansible's get_all_dependencies order)."""
    found: list[str] = []
    for dep in deps.get(name, []):
        if dep not in seen:
            found += [*_all_deps(dep, deps, seen | {name}), dep]
    return list(dict.fromkeys(found))


def _parents(name: str, brought_by: dict[str, str]) -> list[str]:
    """The roles that brought ``name`` in, outermost first (Ansible's dependency chain)."""
    found: list[str] = []
    while name in brought_by and brought_by[name] not in found and brought_by[name] != name:
        name = brought_by[name]
        found.insert(0, name)
    return found


def _last_loaded(handlers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One handler of each name: the one loaded last (the chain's roles in order, then the included roles'),
    which is the one a notify runs in Ansible, where another role's handler of the same name is shadowed."""
    last = {handler.get("name"): position for position, handler in enumerate(handlers)}
    return [handler for position, handler in enumerate(handlers) if last[handler.get("name")] == position]


def _included_handlers(
    collector: Collector,
    modules: dict[str, Any],
    chain: list[str],
    sources: dict[str, RoleSource],
    problems: list[Diagnostic],
) -> list[dict[str, Any]]:
    """The handlers of included roles (``handlers_from`` or main.yml), each file once; a handler may
    include a role in turn, so the list of uses may grow while it is read."""
    handlers: list[dict[str, Any]] = []
    done: set[tuple[str, str]] = set()
    position = 0
    while position < len(collector.role_uses):
        use = collector.role_uses[position]
        position += 1
        key = (use.name, use.handlers_from)
        if key in done or (not use.handlers_from and use.name in chain):
            continue
        done.add(key)
        src = sources[use.name]
        doc = _load(src.tree, use.handlers_from, problems) if use.handlers_from else src.handlers_doc
        if doc is not None:
            compiler = StepCompiler(collector, modules, use.name, src.dir, doc, src.tree)
            handlers += compiler.compile_file(handlers=True)
    return handlers


def _vault_values(variables: dict[str, Any], sources: dict[str, RoleSource], chain: list[str]) -> set[str]:
    """Every decrypted vault value (variables and vars/ files): redacted everywhere, as no_log values."""
    from kiln.controller.vault import VaultSecret

    found: set[str] = set()
    todo: list[Any] = [variables] + [sources[name].vars_files for name in chain]
    while todo:
        value = todo.pop()
        if isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
        elif isinstance(value, VaultSecret) and value:
            found.add(str(value))
    return found


def _render_names(steps: list[dict[str, Any]], resolved: Any, runtime: set[str]) -> None:
    """Step names with Jinja, rendered where the controller knows every name (the rest on the box): with the
    variables the step's role sees (``resolved(role)``) and its own vars, never with a
    value a loop, set_fact or register gives there."""
    for step in steps:
        name = step.get("name")
        if is_templated(name):
            own = step.get("vars") or {}
            reads = _undeclared_in(name)
            if not reads & (runtime | _loop_names(step)) and not any(any_templated(own[n]) for n in reads & set(own)):
                try:
                    step["name"] = str(render(name, {**resolved(step.get("role")), **own}))
                except Exception:  # noqa: BLE001 - facts, registered results, loop items: the box renders it
                    pass
        for key in ("block", "rescue", "always"):  # an include loop's item is the box's, for the steps inside
            _render_names(step.get(key, []), resolved, runtime | _loop_names(step))


def _decide_no_log(step: dict[str, Any], resolved: Any, runtime: set[str], check_mode: bool) -> None:
    """A templated no_log rendered with what the step sees, unless it reads what only the box knows (a set_fact,
    a registered result, an include_vars): then it stays as written, which the box takes as true (redacted)."""
    text = step["no_log"]
    own = step.get("vars") or {}
    if _undeclared_in(text) & (runtime - set(own)) or any(
        any_templated(own[n]) for n in _undeclared_in(text) & set(own)
    ):
        return
    try:
        rendered = render(text, {**resolved(step.get("role")), **own, "ansible_check_mode": check_mode})
    except Exception:  # noqa: BLE001 - an undefined name is reported where it is written; hidden meanwhile
        return
    step["no_log"] = rendered is True or str(rendered).strip().lower() in ("true", "yes", "on", "1")


def _runtime_behind(runtime: set[str], variables: dict[str, Any]) -> set[str]:
    """``runtime`` and every variable whose value reads one of them (transitively): what only the box knows."""
    reads = {name: _undeclared_in(value) for name, value in variables.items() if any_templated(value)}
    found = set(runtime)
    grew = True
    while grew:
        more = {name for name, names in reads.items() if name not in found and names & found}
        found |= more
        grew = bool(more)
    return found


def _loop_names(step: dict[str, Any]) -> set[str]:
    if "loop" not in step:
        return set()
    control = step.get("loop_control") or {}
    return {step.get("loop_var") or control.get("loop_var") or "item", control.get("index_var") or "item"}


def _collect_var_refs(collector: Collector, doc: Document, path: tuple[Any, ...], value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _collect_var_refs(collector, doc, path + (key,), item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _collect_var_refs(collector, doc, path + (index,), item)
    elif is_templated(value):
        collector.refs.append(Ref(doc, path, value, True, role_variable=True))


def compile_role(
    playbooks_dir: Path,
    role: str,
    provider: str,
    config: Config,
    overrides: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    skip_tags: list[str] | None = None,
    check_mode: bool = False,
    diff: bool = False,
) -> CompiledRole:
    """Validate and compile ``role`` with its dependencies; raise InvalidInput with every problem."""
    compiled = _compile(
        playbooks_dir, role, provider, config, overrides, tags, skip_tags, want_hash=True, check_mode=check_mode
    )
    # not fields of CompiledRole (a shared contract): carried along for bundle_json
    compiled.check_mode = check_mode  # type: ignore[attr-defined]
    compiled.diff = diff  # type: ignore[attr-defined]
    return compiled


def validate_roles(playbooks_dir: Path, roles: list[str] | None, config: Config) -> list[Diagnostic]:
    """Every problem in the given roles (all roles when None); an empty list when all is well."""
    names = list_roles(playbooks_dir) if roles is None else list(roles)
    found: list[Diagnostic] = []
    for name in names:
        try:
            _compile(playbooks_dir, name, "local", config, None, None, None, want_hash=False)
        except InvalidInput as exc:
            found.extend(exc.diagnostics)
    return list(dict.fromkeys(found))


def bundle_json(
    compiled: CompiledRole, extra_vars: dict[str, Any], *, check_mode: bool | None = None, diff: bool | None = None
) -> dict[str, Any]:
    """The bundle.json dict (docs/internals.md); ``extra_vars`` carries ``kiln: {role, version, build_id}``."""
    # as written: the agent renders each variable when it is read, with the run's variables as they are then
    # (Ansible's lazy templating: a set_fact or a registered result changes what later reads give)
    variables = {**compiled.variables, **extra_vars}
    return {
        "role": compiled.role,
        "vars": variables,
        "var_sources": getattr(compiled, "var_sources", {}),
        # per role, the names its own tasks see otherwise (Scopes); an agent without role scopes ignores it
        "role_vars": getattr(compiled, "role_vars", {}),
        "steps": compiled.steps,
        "handlers": compiled.handlers,
        "check_mode": bool(getattr(compiled, "check_mode", False) if check_mode is None else check_mode),
        "diff": bool(getattr(compiled, "diff", False) if diff is None else diff),
    }


__all__ = [
    "compile_role",
    "validate_roles",
    "bundle_json",
    "parse_var_overrides",
    "list_roles",
    "resolve_variables",
    "JINJA_GLOBALS",
]


def _undeclared_in(value: Any) -> set[str]:
    from kiln.agent.templating import undeclared

    if isinstance(value, dict):
        return set().union(*(_undeclared_in(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_undeclared_in(v) for v in value)) if value else set()
    if not is_templated(value):
        return set()
    try:
        return set(undeclared(value))
    except Exception:  # noqa: BLE001 - syntax errors are reported by the render attempt
        return {"<invalid template>"}


def _names_behind(names: set[str], variables: dict[str, Any]) -> set[str]:
    """``names`` plus every variable their values are made of, transitively.

    A no_log step using ``db_url: "postgres://app:{{ db_password }}@db"`` hides the URL
    and the password on its own too (it may show up alone elsewhere).
    """
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        if name in variables:
            todo.extend(n for n in _undeclared_in(variables[name]) if n in variables)
    return found
