"""Check that a systemd service is running (or not) and enabled (or not).

Example::

    - service: nginx
    - service: {name: telnet, running: false, enabled: false}
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from ..api import Context

SCHEMA = {
    "description": "A systemd service is running (or not), and enabled at boot (or not).",
    "free_form": "name",
    "args": {
        "name": {"type": "str", "required": True, "description": 'Unit name (".service" may be left out).'},
        "running": {"type": "bool", "default": True, "description": "true: active; false: not active."},
        "enabled": {
            "type": "bool",
            "description": "true: enabled at boot; false: not enabled (unchecked when left out).",
        },
    },
    "example": "- service: nginx\n- service: {name: ssh, running: true, enabled: true}",
}

ENABLED = ("enabled", "enabled-runtime", "static", "indirect", "generated", "alias", "linked", "linked-runtime")


def probe(params: Dict[str, Any], ctx: Context) -> Tuple[bool, str]:
    name = params["name"]
    load = ctx.run(["systemctl", "show", "-p", "LoadState", "--value", name], check=False).stdout.strip()
    active = ctx.run(["systemctl", "is-active", name], check=False).stdout.strip() or "unknown"
    enabled = ctx.run(["systemctl", "is-enabled", name], check=False).stdout.strip() or "unknown"
    if load == "not-found":
        return (not params["running"] and params.get("enabled") in (None, False)), f"{name}: no such unit"
    problems = []
    if (active == "active") != params["running"]:
        problems.append(f"is {active}" + (" (wanted running)" if params["running"] else " (wanted stopped)"))
    if params.get("enabled") is not None and (enabled in ENABLED) != params["enabled"]:
        problems.append(f"is {enabled}" + (" (wanted enabled)" if params["enabled"] else " (wanted disabled)"))
    seen = f"{name}: {active}, {enabled}"
    if problems:
        return False, f"{name} " + "; ".join(problems)
    return True, seen
