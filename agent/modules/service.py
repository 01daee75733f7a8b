"""Start, stop, restart or reload a systemd service, and enable or disable it at boot.

``started``/``stopped`` change only what differs (read with ``systemctl is-active`` /
``is-enabled`` first); ``restarted``/``reloaded`` always act: they are what handlers use.

Example::

    - service: {name: nginx, state: started, enabled: true}
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from ..api import Context, ModuleError, Result


def _name_needed(args: Dict[str, Any]) -> List[Tuple[Tuple[str, ...], str]]:
    acting = [key for key in ("state", "enabled", "masked") if args.get(key) is not None]
    if acting and not args.get("name"):
        return [((), f"missing required argument 'name' ({acting[0]} acts on a unit; daemon_reload alone needs none)")]
    return []


SCHEMA = {
    "description": "Manage a systemd service: started/stopped/restarted/reloaded, enabled at boot or not.",
    "args": {
        "name": {
            "type": "str",
            "aliases": ["service", "unit"],
            "description": 'Unit name (".service" may be left out); needed by state, enabled and masked.',
        },
        "state": {
            "type": "str",
            "choices": ["started", "stopped", "restarted", "reloaded"],
            "description": "started/stopped: only when different; restarted/reloaded: always "
            "(reloaded starts a stopped service).",
        },
        "enabled": {"type": "bool", "description": "Start at boot (systemctl enable) or not."},
        "masked": {
            "type": "bool",
            "description": "Mask the unit (it cannot be started at all) or unmask it; applied before enabled and state.",
        },
        "daemon_reload": {
            "type": "bool",
            "default": False,
            "aliases": ["daemon-reload"],
            "description": "Run systemctl daemon-reload first (after changing unit files); alone, it needs no name "
            "and is not a change, as in Ansible.",
        },
    },
    "required_one_of": [["state", "enabled", "masked", "daemon_reload"]],
    "rules": [_name_needed],
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
    name = params.get("name")
    if not name:
        return {}
    load = ctx.run(["systemctl", "show", "-p", "LoadState", "--value", name], check=False).stdout.strip()
    active = ctx.run(["systemctl", "is-active", name], check=False).stdout.strip() or "unknown"
    enabled = ctx.run(["systemctl", "is-enabled", name], check=False).stdout.strip() or "unknown"
    return {"load": load, "active": active, "enabled": enabled}


def _masking(masked: Any, state: Dict[str, Any]) -> List[Tuple[str, str]]:
    is_masked = state["enabled"].startswith("masked")
    if masked is True and not is_masked:
        return [("mask", "masked")]
    if masked is False and is_masked:
        return [("unmask", "unmasked")]
    return []


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    name = params.get("name")
    if params["daemon_reload"] and not ctx.check_mode:
        ctx.run(["systemctl", "daemon-reload"])
        state = check(params, ctx)
    if not name:
        return Result(False, "systemd reloaded its units" + (" (check mode: not run)" if ctx.check_mode else ""))
    if state["load"] == "not-found" and params.get("masked") is None:
        if ctx.check_mode:
            return Result(True, f"service {name} is not installed (yet?); cannot predict", predicted=False)
        raise ModuleError(f"service {name} not found (no such unit)")
    actions = _masking(params.get("masked"), state)
    before: Dict[str, Any] = {"masked": not params["masked"]} if actions else {}
    after: Dict[str, Any] = {"masked": params["masked"]} if actions else {}
    masked_after = state["enabled"].startswith("masked") if params.get("masked") is None else params["masked"]
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
        if masked_after and enabled:
            raise ModuleError(f"service {name} is masked; unmask it first (masked: false)")
        is_on = state["enabled"] in ENABLED and not actions[:1] == [("unmask", "unmasked")]
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
