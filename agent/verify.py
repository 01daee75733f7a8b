"""Run goss-like checks: each a file in ``agent/checks/`` with SCHEMA and ``probe``.

A check's ``probe(params, ctx) -> (passed, observed)`` only reads.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List

from . import schema as argschema
from .api import Context, ModuleError
from .checks import discover
from .protocol import CheckStatus, Event
from .templating import TemplateError, render


def run_checks(
    checks: List[Dict[str, Any]],
    facts: Dict[str, Any],
    emit: Callable[[Dict[str, Any]], None],
    variables: Dict[str, Any],
) -> bool:
    available = discover()
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
            try:
                args = render(args, dict(variables, facts=facts))
            except TemplateError as exc:
                raise ModuleError(f"templating: {exc}") from None
            if "{{" in event["name"]:
                try:
                    event["name"] = str(render(event["name"], dict(variables, facts=facts)))
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
