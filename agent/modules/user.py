"""Manage a local user account with useradd / usermod / userdel.

The account is read from the passwd and group databases first; only the attributes
that differ are changed.

Example::

    - user: {name: deploy, groups: [sudo], append: true, shell: /bin/bash}
"""

from __future__ import annotations

import grp
import pwd
from typing import Any, Dict, List

from ..api import Context, ModuleError, Result

SCHEMA = {
    "description": "Create, change or remove a local user account.",
    "args": {
        "name": {"type": "str", "required": True, "aliases": ["user"], "description": "The user name."},
        "state": {
            "type": "str",
            "choices": ["present", "absent"],
            "default": "present",
            "description": "present: the account exists as described; absent: it does not.",
        },
        "uid": {"type": "int", "description": "User id."},
        "group": {"type": "str", "description": "Primary group (name); created by useradd when not given."},
        "groups": {"type": "list", "elements": "str", "description": "Supplementary groups (they must exist)."},
        "append": {
            "type": "bool",
            "default": False,
            "description": "true: add to groups, keep the others; false: groups is the whole list.",
        },
        "shell": {"type": "str", "description": "Login shell."},
        "home": {"type": "path", "description": "Home directory."},
        "create_home": {"type": "bool", "default": True, "description": "Create the home directory on creation."},
        "system": {"type": "bool", "default": False, "description": "A system account (on creation only)."},
        "comment": {"type": "str", "description": "GECOS comment (full name)."},
        "password_lock": {
            "type": "bool",
            "description": "true: lock the password (no password logins); false: unlock it.",
        },
        "remove": {"type": "bool", "default": False, "description": "With state=absent: also remove the home."},
    },
    "check_mode": "full",
    "diff": True,
    "example": "- user: {name: deploy, groups: [sudo], append: true, shell: /bin/bash}",
}


def _shadow_locked(name: str) -> bool | None:
    try:
        with open("/etc/shadow") as handle:
            for line in handle:
                fields = line.rstrip("\n").split(":")
                if fields[0] == name and len(fields) > 1:
                    return fields[1].startswith("!")
    except OSError:
        return None
    return None


def read_user(name: str) -> Dict[str, Any] | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    try:
        primary = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        primary = str(entry.pw_gid)
    groups = sorted(g.gr_name for g in grp.getgrall() if name in g.gr_mem and g.gr_name != primary)
    return {
        "name": name,
        "uid": entry.pw_uid,
        "group": primary,
        "groups": groups,
        "shell": entry.pw_shell,
        "home": entry.pw_dir,
        "comment": entry.pw_gecos,
        "password_lock": _shadow_locked(name),
    }


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any] | None:
    return read_user(params["name"])


def _missing_groups(names: List[str]) -> List[str]:
    missing = []
    for name in names:
        try:
            grp.getgrnam(name)
        except KeyError:
            missing.append(name)
    return missing


def _wanted(params: Dict[str, Any], now: Dict[str, Any]) -> Dict[str, Any]:
    """The attributes that differ: name -> wanted value."""
    out: Dict[str, Any] = {}
    for key in ("uid", "group", "shell", "home", "comment"):
        if params.get(key) is not None and params[key] != now.get(key):
            out[key] = params[key]
    if params.get("groups") is not None:
        wanted = set(params["groups"]) - {now.get("group")}
        have = set(now.get("groups", []))
        target = (have | wanted) if params["append"] else wanted
        if target != have:
            out["groups"] = sorted(target)
    if params.get("password_lock") is not None and params["password_lock"] != now.get("password_lock"):
        out["password_lock"] = params["password_lock"]
    return out


def apply(params: Dict[str, Any], state: Dict[str, Any] | None, ctx: Context) -> Result:
    name = params["name"]
    if params["state"] == "absent":
        if state is None:
            return Result(False, f"user {name} is already absent")
        if not ctx.check_mode:
            ctx.run(["userdel", *(["-r"] if params["remove"] else []), name])
        return Result(True, f"removed user {name}", diff={"before": state, "after": "absent"})
    groups = params.get("groups") or []
    if not ctx.check_mode:
        missing = _missing_groups(groups + ([params["group"]] if params.get("group") else []))
        if missing:
            raise ModuleError(f"group(s) {', '.join(missing)} do not exist (create them with the group module)")
    if state is None:
        after = {
            k: params[k]
            for k in ("uid", "group", "groups", "shell", "home", "comment", "password_lock")
            if params.get(k) is not None
        }
        if ctx.check_mode:
            return Result(True, f"would create user {name}", diff={"before": "absent", "after": after})
        argv = ["useradd"]
        if params.get("uid") is not None:
            argv += ["-u", str(params["uid"])]
        if params.get("group"):
            argv += ["-g", params["group"]]
        if groups:
            argv += ["-G", ",".join(groups)]
        if params.get("shell"):
            argv += ["-s", params["shell"]]
        if params.get("home"):
            argv += ["-d", params["home"]]
        if params.get("comment") is not None:
            argv += ["-c", params["comment"]]
        if params["system"]:
            argv.append("-r")
        argv.append("-m" if params["create_home"] else "-M")
        ctx.run(argv + [name])
        if params.get("password_lock") is not None:
            ctx.run(["usermod", "-L" if params["password_lock"] else "-U", name])
        created = read_user(name) or {}
        return Result(
            True,
            f"created user {name}",
            diff={"before": "absent", "after": created},
            data={"uid": created.get("uid"), "home": created.get("home")},
        )
    wanted = _wanted(params, state)
    if not wanted:
        return Result(False, f"user {name} is as wanted", data={"uid": state["uid"], "home": state["home"]})
    before = {k: state.get(k) for k in wanted}
    msg = f"user {name}: " + ", ".join(f"{k} {before[k]!r} -> {v!r}" for k, v in wanted.items())
    if ctx.check_mode:
        return Result(True, f"{msg} (check mode)", diff={"before": before, "after": wanted})
    argv = ["usermod"]
    flags = {"uid": "-u", "group": "-g", "shell": "-s", "home": "-d", "comment": "-c"}
    for key, flag in flags.items():
        if key in wanted:
            argv += [flag, str(wanted[key])]
    if "groups" in wanted:
        argv += ["-G", ",".join(wanted["groups"])]
    if "password_lock" in wanted:
        argv.append("-L" if wanted["password_lock"] else "-U")
    ctx.run(argv + [name])
    return Result(
        True,
        msg,
        diff={"before": before, "after": wanted},
        data={"uid": wanted.get("uid", state["uid"]), "home": wanted.get("home", state["home"])},
    )
