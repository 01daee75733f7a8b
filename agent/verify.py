"""Run goss-like checks: each a file in ``agent/checks/`` with SCHEMA and ``probe``.

A check's ``probe(params, ctx) -> (passed, observed)`` only reads. Its arguments are rendered with
the variables the steps had: the bundle's (each rendered when read, as in the apply), Ansible's names
(``ansible_facts``, ``ansible_*``), ``facts`` and what the apply set (registered results, set_fact and
include_vars values), kept beside the bundle by the runner. A check of a role sees that role's own variables
(the bundle's ``role_vars``) as the role's steps did.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from . import facts as boxfacts
from . import schema as argschema
from .api import Context, ModuleError
from .checks import by_name
from .protocol import CheckStatus, Event
from .templating import Scope, TemplateError, render

BUNDLE_FILE = "bundle.json"
RUN_VARIABLES_FILE = "run-vars.json"  # agent/runner.py writes it


def run_checks_file(checks_file: str, facts: Dict[str, Any], emit: Callable[[Dict[str, Any]], None]) -> bool:
    """Run the checks in ``checks_file`` with the variables of the bundle (and of its apply) beside it."""
    with open(checks_file) as handle:
        checks = json.load(handle)
    return run_checks(checks, facts, emit, checks_scope(os.path.dirname(os.path.abspath(checks_file)), facts))


class RoleScopes:
    """The variables the steps had (``shared``), and above them, for a check of a role, what that role's own steps
    saw otherwise (``role_vars``: its own defaults over another role's), as the runner's step scope layers them:
    below what the run set."""

    def __init__(
        self, shared: Scope, role_vars: Optional[Mapping[str, Mapping[str, Any]]] = None, learned: Any = ()
    ) -> None:
        self.shared = shared
        self.role_vars = role_vars or {}
        self.learned = set(learned)
        self._made: Dict[str, Scope] = {}

    def of(self, check: Mapping[str, Any]) -> Scope:
        role = check.get("role") or ""
        seen = self.role_vars.get(role)
        if not seen:
            return self.shared
        if role not in self._made:
            self._made[role] = self.shared.child({k: v for k, v in seen.items() if k not in self.learned}, True)
        return self._made[role]


def _read(path: str) -> Dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        return dict(json.load(handle))


def checks_scope(bundle_dir: str, facts: Dict[str, Any]) -> RoleScopes:
    """The variables the steps had, as they were when the apply ended."""
    bundle = _read(os.path.join(bundle_dir, BUNDLE_FILE))
    run = _read(os.path.join(bundle_dir, RUN_VARIABLES_FILE))
    shared = variables_scope(bundle.get("vars") or {}, facts, run, bundle.get("var_sources") or {})
    return RoleScopes(shared, bundle.get("role_vars") or {}, (run.get("variables") or {}).keys())


def variables_scope(
    variables: Mapping[str, Any],
    facts: Dict[str, Any],
    run: Mapping[str, Any] | None = None,
    sources: Mapping[str, str] | None = None,
) -> Scope:
    """``variables`` (templates, rendered when read) with the run's own values above and Ansible's names below."""
    names = boxfacts.variables(facts) if facts.get("ansible") else {}
    learned = dict((run or {}).get("variables") or {})
    layers = [
        ({"facts": facts}, False),
        (learned, set((run or {}).get("templated") or [])),
        (variables, True),
        (names, False),
    ]
    return Scope(layers, sources)  # type: ignore[arg-type]


def run_checks(
    checks: List[Dict[str, Any]],
    facts: Dict[str, Any],
    emit: Callable[[Dict[str, Any]], None],
    variables: Union[RoleScopes, Mapping[str, Any]],
) -> bool:
    """Run ``checks``; ``variables``: each role's scope (RoleScopes), a Scope, or the bundle's variables as written."""
    if not isinstance(variables, RoleScopes):
        variables = RoleScopes(variables if isinstance(variables, Scope) else variables_scope(variables, facts))
    available = by_name()
    ctx = Context(facts=facts)
    counts = {CheckStatus.PASSED.value: 0, CheckStatus.FAILED.value: 0}
    for index, check in enumerate(checks, 1):
        started = time.monotonic()
        kind = check["check"]
        event: Dict[str, Any] = {
            "event": Event.CHECK,
            "index": index,
            "check": kind,
            "name": check.get("name") or f"{kind} {check.get('target', '')}".strip(),
            "source": check.get("source"),
        }
        impl = available.get(kind)
        try:
            if impl is None:
                raise ModuleError(f"unknown check '{kind}'")
            args = check.get("args", {})
            scope = variables.of(check)
            try:
                args = render(args, scope)
            except TemplateError as exc:
                raise ModuleError(f"templating: {exc}") from None
            if "{{" in event["name"]:
                try:
                    event["name"] = str(render(event["name"], scope))
                except TemplateError:
                    pass
            params, errors = argschema.validate(impl.SCHEMA, args)
            if errors:
                raise ModuleError("; ".join(e.message for e in errors))
            passed, observed = impl.probe(params, ctx)
        except ModuleError as exc:
            passed, observed = False, exc.msg
        except OSError as exc:
            passed, observed = False, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug in a check fails that check, not the whole verify run
            passed, observed = False, f"check {kind} crashed: {type(exc).__name__}: {exc}"
        event.update(
            status=CheckStatus.PASSED if passed else CheckStatus.FAILED,
            observed=observed,
            duration=round(time.monotonic() - started, 4),
        )
        counts[event["status"].value] += 1
        emit(event)
    emit(dict(counts, event=Event.SUMMARY))
    return counts[CheckStatus.FAILED.value] == 0
