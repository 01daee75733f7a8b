"""Manage a local user account with useradd / usermod / userdel.

The account is read from the passwd and group databases first; only the attributes
that differ are changed.

Example::

    - user: {name: deploy, groups: [sudo], append: true, shell: /bin/bash}
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import time
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
        "create_home": {
            "type": "bool",
            "default": True,
            "aliases": ["createhome"],
            "description": "Create the home directory on creation.",
        },
        "system": {"type": "bool", "default": False, "description": "A system account (on creation only)."},
        "comment": {"type": "str", "description": "GECOS comment (full name)."},
        "password_lock": {
            "type": "bool",
            "description": "true: lock the password (no password logins); false: unlock it.",
        },
        "remove": {"type": "bool", "default": False, "description": "With state=absent: also remove the home."},
        "password": {
            "type": "str",
            "description": "The password as crypt(3) hashes it (as in /etc/shadow, e.g. from password_hash); never "
            "shown in results or logs.",
        },
        "update_password": {
            "type": "str",
            "choices": ["always", "on_create"],
            "default": "always",
            "description": "always: set password when the account's differs; on_create: only when creating it.",
        },
        "expires": {
            "type": "float",
            "description": "When the account expires, in seconds since the epoch (the day counts); negative: never.",
        },
        "password_expire_min": {"type": "int", "description": "Minimum days between password changes (chage -m)."},
        "password_expire_max": {"type": "int", "description": "Maximum days between password changes (chage -M)."},
        "password_expire_warn": {
            "type": "int",
            "description": "Days of warning before the password expires (chage -W).",
        },
    },
    "check_mode": "full",
    "diff": True,
    "example": "- user: {name: deploy, groups: [sudo], append: true, shell: /bin/bash}",
}


#: password ageing arguments -> (their /etc/shadow field, chage's flag); an empty field reads as -1, as spwd has it
AGEING = {"password_expire_min": (3, "-m"), "password_expire_max": (4, "-M"), "password_expire_warn": (5, "-W")}


def read_shadow(name: str) -> List[str] | None:
    """The account's /etc/shadow fields (name, hash, last change, min, max, warn, ...); None when unreadable."""
    try:
        with open("/etc/shadow") as handle:
            for line in handle:
                fields = line.rstrip("\n").split(":")
                if fields[0] == name and len(fields) > 1:
                    return fields + [""] * (9 - len(fields))
    except OSError:
        return None
    return None


def _shadow_locked(name: str) -> bool | None:
    fields = read_shadow(name)
    return fields[1].startswith("!") if fields is not None else None


def _ageing_wanted(params: Dict[str, Any], name: str) -> List[str]:
    """chage's arguments for the ageing fields that differ (none: nothing to change)."""
    fields = read_shadow(name) or [""] * 9
    argv: List[str] = []
    for key, (field, flag) in AGEING.items():
        if params.get(key) is not None and params[key] != int(fields[field] or -1):
            argv += [flag, str(params[key])]
    return argv


def _password_wanted(params: Dict[str, Any], name: str) -> bool:
    """Whether the hash must be set (Ansible's rule: with update_password=always, when it differs, a lock aside)."""
    if params.get("password") is None or params["update_password"] != "always":
        return False
    current = (read_shadow(name) or ["", ""])[1]
    return current.lstrip("!") != params["password"].lstrip("!")


def _expiry_date(seconds: float) -> str:
    """usermod/useradd -e's value: the day (UTC), or "" (never) for a negative time, as Ansible's module gives it."""
    return "" if seconds < 0 else time.strftime("%Y-%m-%d", time.gmtime(seconds))


def _expires_wanted(params: Dict[str, Any]) -> str | None:
    """-e's value when the account's expiry day differs from the one asked (Ansible compares year, month, day)."""
    if params.get("expires") is None:
        return None
    field = (read_shadow(params["name"]) or [""] * 9)[7]
    current = int(field) if field.strip() else -1
    if params["expires"] < 0:
        return "" if current >= 0 else None
    wanted = time.gmtime(params["expires"])
    if current < 0 or time.gmtime(current * 86400)[:3] != wanted[:3]:
        return _expiry_date(params["expires"])
    return None


def _run_hiding_hash(ctx: Context, argv: List[str], params: Dict[str, Any]) -> None:
    """Run useradd/usermod; a failure's message and output never show the password hash."""
    try:
        ctx.run(argv)
    except ModuleError as exc:
        secret = params.get("password")
        if not secret:
            raise
        hide = lambda text: text.replace(secret, "********") if isinstance(text, str) else text  # noqa: E731
        raise ModuleError(hide(exc.msg), **{k: hide(v) for k, v in exc.data.items()}) from None


def _hash_argument(params: Dict[str, Any]) -> str:
    """usermod/useradd -p's value: locked in the same command when password_lock asks for it."""
    return ("!" if params.get("password_lock") else "") + params["password"]


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
    expires = _expires_wanted(params)
    if expires is not None:
        out["expires"] = expires
    if _password_wanted(params, params["name"]):
        out["password"] = "(changed)"  # the hash itself never goes in a result
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
    result = _create(params, groups, ctx) if state is None else _modify(params, state, ctx)
    return _with_ageing(params, _with_home(params, result, ctx), ctx)


def _create(params: Dict[str, Any], groups: List[str], ctx: Context) -> Result:
    name = params["name"]
    after = {
        k: params[k]
        for k in ("uid", "group", "groups", "shell", "home", "comment", "password_lock")
        if params.get(k) is not None
    }
    if params.get("password") is not None:
        after["password"] = "(set)"
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
    if params.get("expires") is not None:
        argv += ["-e", _expiry_date(params["expires"])]
    if params.get("password") is not None:
        argv += ["-p", _hash_argument(params)]
    if params["system"]:
        argv.append("-r")
    argv.append("-m" if params["create_home"] else "-M")
    _run_hiding_hash(ctx, argv + [name], params)
    if params.get("password_lock") is not None and params.get("password") is None:
        ctx.run(["usermod", "-L" if params["password_lock"] else "-U", name])
    created = read_user(name) or {}
    return Result(
        True,
        f"created user {name}",
        diff={"before": "absent", "after": created},
        data={"uid": created.get("uid"), "home": created.get("home")},
    )


def _modify(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    name = params["name"]
    wanted = _wanted(params, state)
    if not wanted:
        return Result(False, f"user {name} is as wanted", data={"uid": state["uid"], "home": state["home"]})
    before = {k: ("(hidden)" if k == "password" else state.get(k)) for k in wanted}
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
    if "expires" in wanted:
        argv += ["-e", wanted["expires"]]
    if "password" in wanted:  # -p excludes -L/-U: the lock rides in the hash (Ansible's order)
        argv += ["-p", _hash_argument(params)]
    elif "password_lock" in wanted:
        argv.append("-L" if wanted["password_lock"] else "-U")
    _run_hiding_hash(ctx, argv + [name], params)
    return Result(
        True,
        msg,
        diff={"before": before, "after": wanted},
        data={"uid": wanted.get("uid", state["uid"]), "home": wanted.get("home", state["home"])},
    )


def _home_mode() -> int:
    """The mode useradd gives a home: login.defs' HOME_MODE, else 0777 less its UMASK, else 0755."""
    mode = 0o755
    try:
        with open("/etc/login.defs") as handle:
            for line in handle:
                home_mode = re.match(r"^HOME_MODE\s+(\d+)$", line)
                if home_mode:
                    return int(home_mode.group(1), 8)
                umask = re.match(r"^UMASK\s+(\d+)$", line)
                if umask:
                    mode = 0o777 & ~int(umask.group(1), 8)
    except OSError:
        pass
    return mode


def _make_home(path: str, uid: int, gid: int) -> None:
    """A home as Ansible's user module makes a missing one: /etc/skel copied (links kept), the mode, the owner."""
    if os.path.exists("/etc/skel"):
        shutil.copytree("/etc/skel", path, symlinks=True)
    else:
        os.makedirs(path)
    os.chmod(path, _home_mode())
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chown(os.path.join(root, name), uid, gid)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chown(os.path.join(root, name), uid, gid)


def _with_home(params: Dict[str, Any], result: Result, ctx: Context) -> Result:
    """An existing account whose home is missing gets one when create_home holds (Ansible does this on every run,
    so a user first made with create_home: false gets its home from a later step that does not say so)."""
    if not params["create_home"]:
        return result
    try:
        entry = pwd.getpwnam(params["name"])
    except KeyError:  # check mode: not created
        return result
    home = params.get("home") or entry.pw_dir
    if os.path.exists(home):
        return result
    if not ctx.check_mode:
        _make_home(home, entry.pw_uid, entry.pw_gid)
    msg = f"{result.msg}; created home {home}" if result.changed else f"user {params['name']}: created home {home}"
    return Result(True, msg, diff=result.diff, data=result.data)


def _with_ageing(params: Dict[str, Any], result: Result, ctx: Context) -> Result:
    """Password ageing after the account is as wanted, as Ansible's user module does it (chage, the fields that
    differ); a change makes the step changed."""
    if not any(params.get(key) is not None for key in AGEING):
        return result
    argv = _ageing_wanted(params, params["name"])
    if not argv:
        return result
    if not ctx.check_mode:
        ctx.run(["chage", *argv, params["name"]])
    msg = (
        f"{result.msg}; password ageing: chage {' '.join(argv)}"
        if result.changed
        else f"user {params['name']}: chage {' '.join(argv)}"
    )
    return Result(True, msg, diff=result.diff, data=result.data)
