"""Start, stop, restart or reload a systemd service, and enable or disable it at boot.

``started``/``stopped`` change only what differs (read with ``systemctl is-active`` /
``is-enabled`` first); ``restarted``/``reloaded`` always act: they are what handlers use.

Example::

    - service: {name: nginx, state: started, enabled: true}
"""

from __future__ import annotations

from typing import Any, Dict

from ..api import Context, ModuleError, Result

SCHEMA = {
    "description": "Manage a systemd service: started/stopped/restarted/reloaded, enabled at boot or not.",
    "args": {
        "name": {
            "type": "str",
            "required": True,
            "aliases": ["service", "unit"],
            "description": 'Unit name (".service" may be left out).',
        },
        "state": {
            "type": "str",
            "choices": ["started", "stopped", "restarted", "reloaded"],
            "description": "started/stopped: only when different; restarted/reloaded: always "
            "(reloaded starts a stopped service).",
        },
        "enabled": {"type": "bool", "description": "Start at boot (systemctl enable) or not."},
        "daemon_reload": {
            "type": "bool",
            "default": False,
            "description": "Run systemctl daemon-reload first (after changing unit files).",
        },
    },
    "required_one_of": [["state", "enabled", "daemon_reload"]],
    "check_mode": "full",
    "diff": True,
    "example": "- service: {name: nginx, state: started, enabled: true}",
}

ACTIVE = ("active", "activating", "reloading", "refreshing")
ENABLED = ("enabled", "enabled-runtime", "static", "indirect", "generated", "alias", "linked", "linked-runtime")


def _systemd(ctx: Context) -> None:
    if ctx.facts.get("init", "systemd") != "systemd":
        raise ModuleError(f"service: only systemd is supported (this box's init is {ctx.facts.get('init')})")


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    _systemd(ctx)
    name = params["name"]
    load = ctx.run(["systemctl", "show", "-p", "LoadState", "--value", name], check=False).stdout.strip()
    active = ctx.run(["systemctl", "is-active", name], check=False).stdout.strip() or "unknown"
    enabled = ctx.run(["systemctl", "is-enabled", name], check=False).stdout.strip() or "unknown"
    return {"load": load, "active": active, "enabled": enabled}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    name = params["name"]
    if params["daemon_reload"] and not ctx.check_mode:
        ctx.run(["systemctl", "daemon-reload"])
        state = check(params, ctx)
    if state["load"] == "not-found":
        if ctx.check_mode:
            return Result(True, f"service {name} is not installed (yet?); cannot predict", predicted=False)
        raise ModuleError(f"service {name} not found (no such unit)")
    actions = []
    before: Dict[str, Any] = {}
    after: Dict[str, Any] = {}
    want = params.get("state")
    running = state["active"] in ACTIVE
    if want == "started" and not running:
        actions.append(("start", "started"))
    elif want == "stopped" and running:
        actions.append(("stop", "stopped"))
    elif want == "restarted":
        actions.append(("restart", "restarted"))
    elif want == "reloaded":
        actions.append(("reload" if running else "start", "reloaded" if running else "started"))
    if actions:
        before["state"] = state["active"]
        after["state"] = "inactive" if want == "stopped" else "active"
    enabled = params.get("enabled")
    if enabled is not None:
        if state["enabled"].startswith("masked") and enabled:
            raise ModuleError(f"service {name} is masked; unmask it first")
        is_on = state["enabled"] in ENABLED
        if enabled and not is_on:
            actions.append(("enable", "enabled"))
        elif not enabled and state["enabled"] in ("enabled", "enabled-runtime", "alias", "linked"):
            actions.append(("disable", "disabled"))
        if actions and actions[-1][0] in ("enable", "disable"):
            before["enabled"] = state["enabled"]
            after["enabled"] = "enabled" if enabled else "disabled"
    if not actions:
        return Result(
            False, f"service {name} is as wanted ({state['active']}, {state['enabled']})", data={"status": state}
        )
    msg = f"service {name}: " + ", ".join(done for _, done in actions)
    if ctx.check_mode:
        return Result(True, f"{msg} (check mode)", diff={"before": before, "after": after})
    for verb, _ in actions:
        done = ctx.run(["systemctl", verb, name], check=False)
        if done.rc != 0:
            status = ctx.run(["systemctl", "status", "--no-pager", "-n", "10", name], check=False)
            raise ModuleError(
                f"systemctl {verb} {name} failed: {(done.stderr or done.stdout).strip()}\n{status.stdout.strip()}",
                rc=done.rc,
            )
    return Result(True, msg, diff={"before": before, "after": after}, data={"status": check(params, ctx)})
