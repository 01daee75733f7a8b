"""Start, stop, restart or reload a systemd service, and enable or disable it at boot.

``started``/``stopped`` change only what differs (read with ``systemctl is-active`` /
``is-enabled`` first); ``restarted``/``reloaded`` always act: they are what handlers use.

Example::

    - service: {name: nginx, state: started, enabled: true}
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

from ..api import Context, ModuleError, Result


def _name_needed(args: Dict[str, Any]) -> List[Tuple[Tuple[str, ...], str]]:
    acting = [key for key in ("state", "enabled", "masked") if args.get(key) is not None]
    if acting and not args.get("name"):
        message = f"missing required argument 'name' ({acting[0]} acts on a unit; daemon_reload or daemon_reexec "
        return [((), message + "alone needs none)")]
    return []


SCHEMA = {
    "description": "Manage a systemd service: started/stopped/restarted/reloaded, enabled at boot or not.",
    "args": {
        "name": {
            "type": "str",
            "aliases": ["service", "unit"],
            "description": 'Unit name (".service" may be left out); needed by state, enabled and masked. Alone, '
            "the step reads the unit: registered status is its properties (systemctl show), as in Ansible.",
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
        "daemon_reexec": {
            "type": "bool",
            "default": False,
            "aliases": ["daemon-reexec"],
            "description": "Run systemctl daemon-reexec (after daemon_reload, before the rest); alone, it needs no "
            "name and is not a change, as in Ansible.",
        },
        "scope": {
            "type": "str",
            "default": "system",
            "choices": ["system", "user", "global"],
            "description": "Whose service manager: system, user (systemctl --user, the step's user; "
            "XDG_RUNTIME_DIR defaults to /run/user/UID) or global (systemctl --global: every user's, "
            "enabled/masked only).",
        },
        "no_block": {
            "type": "bool",
            "default": False,
            "description": "Queue start/stop/restart without waiting for them to finish (systemctl --no-block).",
        },
        "force": {
            "type": "bool",
            "default": False,
            "description": "systemctl --force: enable over conflicting symlinks.",
        },
        "sleep": {
            "type": "int",
            "description": "Accepted and ignored, as Ansible's service ignores it on systemd (a restart is one "
            "systemctl restart, which waits for the stop itself).",
        },
    },
    # no required_one_of: Ansible's (state, enabled, masked, daemon_reload, daemon_reexec) is met by daemon_reload's
    # default, so a name alone reads the unit (registered .status: its properties, as `systemctl show` gives them)
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


def systemctl(params: Dict[str, Any]) -> List[str]:
    """systemctl with the step's scope, --no-block and --force, as Ansible's systemd builds it."""
    argv = ["systemctl"]
    if params.get("scope", "system") != "system":
        argv.append(f"--{params['scope']}")
    if params.get("no_block"):
        argv.append("--no-block")
    if params.get("force"):
        argv.append("--force")
    return argv


def _run(ctx: Context, argv: List[str], check: bool = False) -> Any:
    """A systemctl command; a user's manager is found through XDG_RUNTIME_DIR (/run/user/UID unless set)."""
    env = {} if os.environ.get("XDG_RUNTIME_DIR") else {"XDG_RUNTIME_DIR": f"/run/user/{os.geteuid()}"}
    return ctx.run(argv, check=check, env=env)


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    _systemd(ctx)
    name = params.get("name")
    if not name:
        return {}
    ctl = systemctl(params)
    shown = _run(ctx, ctl + ["show", name])
    status = parse_show(shown.stdout.split("\n")) if shown.rc == 0 else {}
    active = _run(ctx, ctl + ["is-active", name]).stdout.strip() or "unknown"
    enabled = _run(ctx, ctl + ["is-enabled", name]).stdout.strip() or "unknown"
    return {"load": status.get("LoadState", ""), "active": active, "enabled": enabled, "status": status}


def parse_show(lines: List[str]) -> Dict[str, str]:
    """``systemctl show``'s KEY=value lines as Ansible's systemd reads them: only an Exec* value that opens a
    ``{`` without closing it goes on over the next lines, up to one ending in ``}`` (other values are one line)."""
    parsed: Dict[str, str] = {}
    key: Optional[str] = None
    pending: List[str] = []
    for line in lines:
        if key is not None:
            pending.append(line)
            if line.rstrip().endswith("}"):
                parsed[key] = "\n".join(pending).strip()
                key, pending = None, []
            continue
        if "=" not in line:
            continue
        name, value = line.split("=", 1)
        if name.startswith("Exec") and value.lstrip().startswith("{") and not value.rstrip().endswith("}"):
            key, pending = name, [value]
            continue
        parsed[name] = value.strip()
    return parsed


def _masking(masked: Any, state: Dict[str, Any]) -> List[Tuple[str, str]]:
    is_masked = state["enabled"].startswith("masked")
    if masked is True and not is_masked:
        return [("mask", "masked")]
    if masked is False and is_masked:
        return [("unmask", "unmasked")]
    return []


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    name = params.get("name")
    managed = [verb for verb in ("daemon_reload", "daemon_reexec") if params.get(verb)]
    if managed and not ctx.check_mode:
        for verb in managed:
            _run(ctx, systemctl(params) + [verb.replace("_", "-")], check=True)
        state = check(params, ctx)
    if not name:
        done = " and ".join(verb.replace("_", "-") for verb in managed)
        data = {"name": None, "status": {}}
        if not done:
            return Result(False, "systemd: nothing asked", data=data)
        return Result(False, f"systemd: {done}" + (" (check mode: not run)" if ctx.check_mode else ""), data=data)
    # as Ansible's systemd: the unit's properties as they were before the step, the state and enabled it asked for
    data = {"name": name, "status": state["status"], **_asked(params)}
    if all(params.get(key) is None for key in ("state", "enabled", "masked")):
        shown = f"{state['load'] or 'unknown'}, {state['active']}, {state['enabled']}"
        return Result(False, f"service {name}: {shown}", data=data)
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
        return Result(False, f"service {name} is as wanted ({state['active']}, {state['enabled']})", data=data)
    msg = f"service {name}: " + ", ".join(done for _, done in actions)
    if params.get("sleep") is not None:
        msg += " (sleep ignored: systemd restarts in one step, as Ansible's service says there)"
    if ctx.check_mode:
        return Result(True, f"{msg} (check mode)", diff={"before": before, "after": after}, data=data)
    for verb, _ in actions:
        done = _run(ctx, systemctl(params) + [verb, name])
        if done.rc != 0:
            status = _run(ctx, systemctl(params) + ["status", "--no-pager", "-n", "10", name])
            raise ModuleError(
                f"systemctl {verb} {name} failed: {(done.stderr or done.stdout).strip()}\n{status.stdout.strip()}",
                rc=done.rc,
            )
    return Result(True, msg, diff={"before": before, "after": after}, data=data)


def _asked(params: Dict[str, Any]) -> Dict[str, Any]:
    """Ansible's systemd result keys: ``state`` (restarted and reloaded say started) and ``enabled`` when given."""
    asked: Dict[str, Any] = {}
    if params.get("state") is not None:
        asked["state"] = "stopped" if params["state"] == "stopped" else "started"
    if params.get("enabled") is not None:
        asked["enabled"] = params["enabled"]
    return asked
