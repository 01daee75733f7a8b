"""Manage a path's type (file, directory, link), mode and owner; or remove it.

Example::

    - file: {path: /srv/www, state: directory, mode: "0755", owner: www-data}
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
from typing import Any, Dict

from ..api import Context, ModuleError, Result, parse_mode

SCHEMA = {
    "description": "Manage a path's type (file, directory, link, touch), mode and owner; or remove it.",
    "args": {
        "path": {"type": "path", "required": True, "aliases": ["dest", "name"], "description": "Path to manage."},
        "state": {
            "type": "str",
            "choices": ["file", "directory", "link", "touch", "absent"],
            "default": "file",
            "description": "file: must exist (not created); directory: created with parents; "
            "link: symlink to src; touch: created empty if missing; absent: removed.",
        },
        "src": {"type": "path", "relative": True, "description": "Link target, with state=link."},
        "mode": {"type": "mode", "description": 'Mode as a quoted octal string ("0644") or symbolic ("u+x").'},
        "owner": {"type": "str", "description": "Owning user name."},
        "group": {"type": "str", "description": "Owning group name."},
        "recurse": {
            "type": "bool",
            "default": False,
            "description": "Apply owner/group/mode to a directory's contents.",
        },
    },
    "required_if": [["state", "link", ["src"]]],
    "check_mode": "full",
    "diff": True,
    "example": '- file: {path: /srv/www, state: directory, mode: "0755"}',
}


def _kind(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "link"
    if stat.S_ISDIR(st.st_mode):
        return "directory"
    return "file"


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any] | None:
    """None when the path is missing, else its type, mode, owner, group and link target."""
    try:
        st = os.lstat(params["path"])
    except FileNotFoundError:
        return None
    state = {"state": _kind(st), "mode": f"{stat.S_IMODE(st.st_mode):04o}"}
    try:
        state["owner"] = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        state["owner"] = str(st.st_uid)
    try:
        state["group"] = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        state["group"] = str(st.st_gid)
    if state["state"] == "link":
        state["src"] = os.readlink(params["path"])
    return state


def attributes_wanted(params: Dict[str, Any], current: Dict[str, Any] | None) -> Dict[str, Any]:
    """The owner/group/mode changes needed on an existing path (shared by copy/template)."""
    wanted = {}
    now = current or {}
    if params.get("owner") and params["owner"] != now.get("owner"):
        wanted["owner"] = params["owner"]
    if params.get("group") and params["group"] != now.get("group"):
        wanted["group"] = params["group"]
    if params.get("mode"):
        mode = parse_mode(params["mode"], int(now.get("mode", "0"), 8))
        if f"{mode:04o}" != now.get("mode"):
            wanted["mode"] = f"{mode:04o}"
    return wanted


def set_attributes(path: str, wanted: Dict[str, Any], follow: bool = True) -> None:
    try:
        uid = pwd.getpwnam(wanted["owner"]).pw_uid if "owner" in wanted else -1
        gid = grp.getgrnam(wanted["group"]).gr_gid if "group" in wanted else -1
    except KeyError as exc:
        raise ModuleError(f"no such user or group: {exc.args[0]}") from None
    if uid != -1 or gid != -1:
        (os.chown if follow else os.lchown)(path, uid, gid)
    if "mode" in wanted:
        os.chmod(path, int(wanted["mode"], 8))


def make_directories(path: str, params: Dict[str, Any]) -> None:
    """``path`` and its missing parents; each new parent gets the step's owner, group and mode, as
    Ansible's file module gives them (``path`` itself is left to the caller)."""
    missing = []
    head = path.rstrip("/") or "/"
    while not os.path.lexists(head):
        missing.append(head)
        head = os.path.dirname(head)
    wanted = attributes_wanted(params, None)
    for directory in reversed(missing):
        os.mkdir(directory)
        if directory != missing[0] and wanted:
            set_attributes(directory, wanted)


def apply(params: Dict[str, Any], state: Dict[str, Any] | None, ctx: Context) -> Result:
    path, want = params["path"], params["state"]
    if want == "absent":
        if state is None:
            return Result(False, f"{path} is already absent")
        if not ctx.check_mode:
            if state["state"] == "directory":
                shutil.rmtree(path)
            else:
                os.unlink(path)
        return Result(True, f"removed {path}", diff={"before": state["state"], "after": "absent"})
    if want == "file" and state is None:
        raise ModuleError(f"{path} does not exist (state=file does not create it; use touch, copy or template)")
    if want == "link":
        if state is not None and state["state"] == "link" and state.get("src") == params["src"]:
            return Result(False, f"{path} already links to {params['src']}")
        if state is not None and state["state"] == "directory":
            raise ModuleError(f"{path} is a directory; refusing to replace it with a link")
        if not ctx.check_mode:
            if state is not None:
                os.unlink(path)
            os.symlink(params["src"], path)
        return Result(
            True,
            f"linked {path} -> {params['src']}",
            diff={"before": state.get("src") if state else "absent", "after": params["src"]},
        )
    if state is not None and want in ("file", "directory") and state["state"] != want:
        raise ModuleError(f"{path} is a {state['state']}, not a {want}")
    changes = []
    if state is None:
        changes.append("created")
        if not ctx.check_mode:
            if want == "directory":
                make_directories(path, params)
            else:
                open(path, "a").close()
    wanted = attributes_wanted(params, state)
    if state is None and not params.get("mode"):
        wanted.pop("mode", None)
    if wanted:
        changes.append(", ".join(f"{k} {v}" for k, v in sorted(wanted.items())))
        if not ctx.check_mode:
            set_attributes(path, wanted)
    if params.get("recurse") and want == "directory" and not ctx.check_mode:
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                child = os.path.join(root, name)
                child_wanted = attributes_wanted(params, check({"path": child}, ctx))
                if child_wanted:
                    changes.append(f"{child}: " + ", ".join(sorted(child_wanted)))
                    set_attributes(child, child_wanted)
    if not changes:
        return Result(False, f"{path} is as wanted")
    before = {k: state.get(k) for k in wanted} if state else "absent"
    return Result(True, f"{path}: " + "; ".join(changes), diff={"before": before, "after": dict(wanted, state=want)})
