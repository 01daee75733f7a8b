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
import time
from typing import Any, Dict, Tuple, Union

from ..api import Context, ModuleError, Result, parse_mode

SCHEMA = {
    "description": "Manage a path's type (file, directory, link, touch), mode and owner; or remove it.",
    "args": {
        "path": {"type": "path", "required": True, "aliases": ["dest", "name"], "description": "Path to manage."},
        "state": {
            "type": "str",
            "choices": ["file", "directory", "link", "hard", "touch", "absent"],
            "default": "file",
            "description": "file: must exist (not created); directory: created with parents; "
            "link: symlink to src; hard: hard link to src; touch: created empty if missing; absent: removed.",
        },
        "src": {"type": "path", "relative": True, "description": "Link target, with state=link or hard."},
        "force": {
            "type": "bool",
            "default": False,
            "description": "link: replace a file or an empty directory at path, and link to a src that does not "
            "exist; hard: replace a file or another hard link (Ansible's rules).",
        },
        "follow": {
            "type": "bool",
            "default": True,
            "description": "When path is a symlink: owner/group/mode/times (and file, directory, touch) act on its "
            "target; false: on the link itself.",
        },
        "modification_time": {
            "type": "str",
            "description": "Set the mtime: a time in modification_time_format, now, or preserve (the default; "
            "touch too, to stay idempotent).",
        },
        "modification_time_format": {
            "type": "str",
            "default": "%Y%m%d%H%M.%S",
            "description": "strptime format of modification_time (the box's local time).",
        },
        "access_time": {
            "type": "str",
            "description": "Set the atime: a time in access_time_format, now, or preserve (the default).",
        },
        "access_time_format": {
            "type": "str",
            "default": "%Y%m%d%H%M.%S",
            "description": "strptime format of access_time (the box's local time).",
        },
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


NOW = "now"
Wanted = Union[None, str, float]  # None: preserve; NOW: the time it runs; a float: that time


def wanted_time(value: str | None, fmt: str, name: str) -> Wanted:
    """Ansible's reading of modification_time/access_time: preserve, now, or a local time in ``fmt``."""
    if value is None or value == "preserve":
        return None
    if value == NOW:
        return NOW
    try:
        return time.mktime(time.strptime(value, fmt))
    except (ValueError, OverflowError) as exc:
        raise ModuleError(f"{name} {value!r} does not match the format {fmt!r}: {exc}") from None


def wanted_times(params: Dict[str, Any]) -> Tuple[Wanted, Wanted]:
    mtime = wanted_time(params.get("modification_time"), params["modification_time_format"], "modification_time")
    atime = wanted_time(params.get("access_time"), params["access_time_format"], "access_time")
    return mtime, atime


def update_times(path: str, times: Tuple[Wanted, Wanted], ctx: Context) -> Dict[str, Any]:
    """Set the times Ansible would (through a symlink, as os.utime does); the changes made, by name."""
    mtime, atime = times
    if mtime is None and atime is None:
        return {}
    st = os.stat(path)
    now = time.time()
    new_mtime = st.st_mtime if mtime is None else now if mtime == NOW else mtime
    new_atime = st.st_atime if atime is None else now if atime == NOW else atime
    changes = {}
    if new_mtime != st.st_mtime:
        changes["mtime"] = new_mtime
    if new_atime != st.st_atime:
        changes["atime"] = new_atime
    if changes and not ctx.check_mode:
        # both "now": utime(None), which needs no ownership of the file
        os.utime(path, None if mtime == NOW and atime == NOW else (new_atime, new_mtime))
    return changes


def _is_hard(path: str) -> bool:
    st = os.lstat(path)
    return stat.S_ISREG(st.st_mode) and st.st_nlink > 1


def _link_refusal(path: str, src: str, state: Dict[str, Any] | None, force: bool) -> str | None:
    """Why Ansible's file refuses state=link here, or None."""
    base = path if state is not None and state["state"] == "directory" else os.path.dirname(path)
    absolute_src = os.path.join(base, src)
    if not force and not os.path.exists(absolute_src):
        return f"src file does not exist, use 'force: true' if you really want to create the link: {absolute_src}"
    if state is None or state["state"] == "link":
        return None
    kind = "hard" if state["state"] == "file" and _is_hard(path) else state["state"]
    if not force:
        return f"refusing to convert from {kind} to symlink for {path}"
    if kind == "directory" and os.listdir(path):
        return f"the directory {path} is not empty, refusing to convert it"
    return None


def _replace_with(make: Any, path: str, was_directory: bool) -> None:
    """Put a new link at ``path`` in one rename (an empty directory there is removed first)."""
    temporary = os.path.join(os.path.dirname(path), f".{os.getpid()}.{time.time()}.tmp")
    try:
        if was_directory:
            os.rmdir(path)
        make(temporary)
        os.rename(temporary, path)
    except OSError as exc:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise ModuleError(f"Error while replacing {path}: {exc}") from None


def _link_target_attributes(params: Dict[str, Any], ctx: Context, times: Tuple[Wanted, Wanted]) -> Dict[str, Any]:
    """owner/group/mode/times after a link is in place: on its target when following (Ansible's default), on the
    link itself otherwise; nothing on a dangling link (Ansible warns and sets nothing)."""
    path = params["path"]
    if not os.path.exists(path):
        return {}
    follow = params["follow"] or not os.path.islink(path)
    target = os.path.realpath(path) if follow else path
    current = check({"path": target}, ctx) if follow else None
    wanted = attributes_wanted(params, current)
    if not follow:  # a symlink's own mode cannot be set on Linux; only its owner
        wanted.pop("mode", None)
        owner = check({"path": path}, ctx) or {}
        wanted = {k: v for k, v in wanted.items() if v != owner.get(k)}
    if wanted and not ctx.check_mode:
        set_attributes(target, wanted, follow=follow)
    return dict(wanted, **update_times(target, times, ctx))


def ensure_link(params: Dict[str, Any], state: Dict[str, Any] | None, ctx: Context, times: Any) -> Result:
    path, src = params["path"], params["src"]
    refusal = _link_refusal(path, src, state, params["force"])
    if refusal:
        raise ModuleError(refusal)
    relink = state is None or state["state"] != "link" or state.get("src") != src
    if relink and not ctx.check_mode:
        if state is None:
            os.symlink(src, path)
        else:
            _replace_with(lambda at: os.symlink(src, at), path, state["state"] == "directory")
    extra = {} if ctx.check_mode and relink else _link_target_attributes(params, ctx, times)
    if not relink and not extra:
        return Result(False, f"{path} already links to {src}")
    before = (state.get("src") if state["state"] == "link" else state["state"]) if state else "absent"
    msg = f"linked {path} -> {src}" if relink else f"{path}: " + ", ".join(sorted(extra))
    return Result(True, msg, diff={"before": before, "after": src if relink else dict(extra)})


def ensure_hard(params: Dict[str, Any], state: Dict[str, Any] | None, ctx: Context, times: Any) -> Result:
    """Ansible's state=hard: src must exist; a file, or a hard link to another inode, is replaced only with
    force; a symlink is replaced."""
    path, src = params["path"], params["src"]
    if not src:
        if state is not None and _is_hard(path):
            return _hard_attributes(params, ctx, times, relinked=False)
        raise ModuleError("src is required for creating new hardlinks")
    if not os.path.exists(src):
        raise ModuleError(f"src does not exist: {src}")
    kind = state["state"] if state else "absent"
    if kind == "file" and _is_hard(path):
        kind = "hard"
    same = kind in ("hard", "file", "directory") and os.stat(path).st_ino == os.stat(src).st_ino
    if same:
        return _hard_attributes(params, ctx, times, relinked=False)
    if kind == "directory" and not params["force"]:
        raise ModuleError("Cannot link: different hard link exists at destination")
    if kind in ("file", "hard") and not params["force"]:
        raise ModuleError(
            "Cannot link, different hard link exists at destination"
            if kind == "hard"
            else f"Cannot link, {kind} exists at destination"
        )
    if not ctx.check_mode:
        if kind == "absent":
            os.link(os.readlink(src) if params["follow"] and os.path.islink(src) else src, path)
        else:
            _replace_with(lambda at: os.link(src, at), path, kind == "directory")
    return _hard_attributes(params, ctx, times, relinked=True, before=kind)


def _hard_attributes(params: Dict[str, Any], ctx: Context, times: Any, relinked: bool, before: str = "") -> Result:
    path = params["path"]
    extra = {} if ctx.check_mode and relinked else _link_target_attributes(params, ctx, times)
    if not relinked and not extra:
        return Result(False, f"{path} is already a hard link to {params.get('src') or 'its inode'}")
    if relinked:
        return Result(True, f"hard-linked {path} -> {params['src']}", diff={"before": before, "after": "hard"})
    return Result(True, f"{path}: " + ", ".join(sorted(extra)), diff={"before": "", "after": dict(extra)})


def _followed(params: Dict[str, Any], state: Dict[str, Any] | None, ctx: Context) -> tuple:
    """With follow (Ansible's default), file/directory/touch on a symlink act on what it points to."""
    if params["follow"] and state is not None and state["state"] == "link":
        target = os.path.realpath(params["path"])
        return dict(params, path=target), check({"path": target}, ctx)
    return params, state


def apply(params: Dict[str, Any], state: Dict[str, Any] | None, ctx: Context) -> Result:
    path, want = params["path"], params["state"]
    times = wanted_times(params)
    if want == "absent":
        if state is None:
            return Result(False, f"{path} is already absent")
        if not ctx.check_mode:
            if state["state"] == "directory":
                shutil.rmtree(path)
            else:
                os.unlink(path)
        return Result(True, f"removed {path}", diff={"before": state["state"], "after": "absent"})
    if want == "link":
        return ensure_link(params, state, ctx, times)
    if want == "hard":
        return ensure_hard(params, state, ctx, times)
    params, state = _followed(params, state, ctx)
    path = params["path"]
    if want == "file" and state is None:
        raise ModuleError(f"{path} does not exist (state=file does not create it; use touch, copy or template)")
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
    timed = update_times(path, times, ctx) if state is not None or not ctx.check_mode else {}
    if timed:
        changes.append(", ".join(sorted(timed)))
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
    after = dict(wanted, state=want, **timed)
    return Result(True, f"{path}: " + "; ".join(changes), diff={"before": before, "after": after})
