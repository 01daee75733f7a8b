"""Unpack a tar (gz/bz2/xz) or zip archive from the role's ``files/`` into a directory.

Without ``creates`` the archive's members are compared with ``dest`` (type, size,
content); the archive is unpacked only when something differs. Members that would
land outside ``dest`` (absolute paths, ``..``, links out) are refused.

Example::

    - unarchive: {src: site.tar.gz, dest: /srv/www, owner: www-data}
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shutil
import stat
import tarfile
import zipfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..api import Context, ModuleError, Result, parse_mode

SCHEMA = {
    "description": "Unpack a tar or zip archive from the role's files/ into an existing directory, when its "
    "content differs.",
    "args": {
        "src": {
            "type": "path",
            "relative": True,
            "required": True,
            "description": "Archive in the role's files/ (or an absolute path on the box).",
        },
        "dest": {"type": "path", "required": True, "description": "Directory to unpack into (must exist)."},
        "creates": {"type": "path", "description": "Skip when this path exists (no comparison)."},
        "owner": {"type": "str", "description": "Owner of the unpacked files (default: root)."},
        "group": {"type": "str", "description": "Group of the unpacked files."},
        "mode": {
            "type": "mode",
            "description": "Mode of every unpacked member (a symbolic mode applies to each member's own).",
        },
        "remote_src": {
            "type": "bool",
            "default": False,
            "description": "src is an archive already on the box (an absolute path), not in the role's files/.",
        },
        "copy": {
            "type": "bool",
            "description": "Ansible's older name for the inverse of remote_src (copy: false is remote_src: true).",
        },
        "extra_opts": {
            "type": "list",
            "default": [],
            "description": "Options Ansible hands to tar: kiln unpacks itself and understands "
            "--strip-components=N (tar archives); any other is refused when the step runs.",
        },
    },
    "mutually_exclusive": [["copy", "remote_src"]],
    "check_mode": "full",
    "diff": True,
    "example": "- unarchive: {src: site.tar.gz, dest: /srv/www}",
}

MAX_LISTED = 50

# (name, kind, mode, size, reader or link target)
Member = Tuple[str, str, int, int, Any]


def _safe_name(name: str, dest: str) -> str:
    cleaned = name.replace("\\", "/")
    while cleaned.startswith("./"):
        cleaned = cleaned[2:]
    if cleaned in (".", ""):
        return ""
    if cleaned.startswith("/") or ".." in cleaned.split("/"):
        raise ModuleError(f"archive member {name!r} would be unpacked outside {dest}; refusing")
    return cleaned.rstrip("/")


def strip_components(params: Dict[str, Any], zipped: bool) -> int:
    """How many leading path parts extra_opts strips: tar's --strip-components, the one option kiln takes."""
    strip = 0
    options = [str(option) for option in params.get("extra_opts") or []]
    while options:
        option = options.pop(0)
        if option.startswith("--strip-components="):
            value = option.split("=", 1)[1]
        elif option in ("--strip-components", "--strip") and options:
            value = options.pop(0)
        else:
            raise ModuleError(
                f"extra_opts: kiln unpacks archives itself and understands --strip-components=N only, not {option!r}"
            )
        if zipped:
            raise ModuleError("extra_opts: --strip-components is tar's option; unzip has none (as in Ansible)")
        if not value.strip().isdigit():
            raise ModuleError(f"extra_opts: --strip-components takes a number, not {value!r}")
        strip = int(value)
    return strip


def _stripped(name: str, strip: int) -> str:
    """tar's rule: the first ``strip`` parts go, and a member with no more parts than that is not unpacked."""
    parts = name.split("/")
    return "/".join(parts[strip:]) if len(parts) > strip else ""


def source_of(params: Dict[str, Any], ctx: Context) -> str:
    """The archive's path on the box: in the bundle's files/, or where it is with remote_src (or copy: false)."""
    remote = params.get("remote_src") or params.get("copy") is False
    src = params["src"]
    if not remote:
        return ctx.source_path(src, "files")
    if "://" in src:
        raise ModuleError(f"src {src}: kiln's unarchive takes no URL; fetch it first with get_url")
    return os.path.abspath(src)


def members(path: str, dest: str, strip: int = 0) -> Iterator[Member]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = _safe_name(info.filename, dest)
                if not name:
                    continue
                mode = (info.external_attr >> 16) & 0o7777
                unix_kind = (info.external_attr >> 16) & 0o170000
                if info.is_dir():
                    yield name, "dir", mode or 0o755, 0, None
                elif unix_kind == stat.S_IFLNK:
                    yield name, "link", 0o777, 0, archive.read(info).decode()
                else:
                    yield name, "file", mode or 0o644, info.file_size, (lambda i=info, a=archive: a.read(i))
        return
    dest_listed = False
    try:
        archive = tarfile.open(path)
    except tarfile.TarError as exc:
        raise ModuleError(f"{path} is neither a tar nor a zip archive: {exc}") from None
    with archive:
        for info in archive.getmembers():
            whole = _safe_name(info.name, dest)
            name = _stripped(whole, strip)
            if whole and not name and not dest_listed:
                # GNU tar lists a member stripped away as an empty name, and Ansible sets the step's owner, group
                # and mode on that name joined to dest: on dest itself
                dest_listed = True
                yield ".", "dest", 0, 0, None
            if not name:
                continue
            if info.isdir():
                yield name, "dir", info.mode, 0, None
            elif info.issym():
                yield name, "link", 0o777, 0, info.linkname
            elif info.islnk():
                yield name, "file", info.mode, info.size, (lambda i=info, a=archive: a.extractfile(i).read())
            elif info.isfile():
                yield name, "file", info.mode, info.size, (lambda i=info, a=archive: a.extractfile(i).read())
            # devices and fifos are skipped


def _differs(target: str, kind: str, size: int, payload: Any) -> bool:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return True
    if kind == "dir":
        return not stat.S_ISDIR(st.st_mode)
    if kind == "link":
        return not stat.S_ISLNK(st.st_mode) or os.readlink(target) != payload
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        return True
    with open(target, "rb") as handle:
        return hashlib.sha256(handle.read()).digest() != hashlib.sha256(payload()).digest()


def _ids(params: Dict[str, Any]) -> Tuple[int, int]:
    try:
        uid = pwd.getpwnam(params["owner"]).pw_uid if params.get("owner") else -1
        gid = grp.getgrnam(params["group"]).gr_gid if params.get("group") else -1
    except KeyError as exc:
        raise ModuleError(f"no such user or group: {exc.args[0]}") from None
    return uid, gid


def _owned_wrong(target: str, uid: int, gid: int) -> bool:
    st = os.lstat(target)
    return (uid != -1 and st.st_uid != uid) or (gid != -1 and st.st_gid != gid)


def member_mode(params: Dict[str, Any], kind: str, archived: int) -> int:
    """The mode a member ends with: the step's mode over the archive's (symbolic modes apply to the latter)."""
    if kind == "link" or not params.get("mode"):
        return archived
    return parse_mode(params["mode"], archived)


def _mode_wrong(target: str, kind: str, params: Dict[str, Any]) -> bool:
    if kind == "link" or not params.get("mode"):
        return False
    current = stat.S_IMODE(os.lstat(target).st_mode)
    return parse_mode(params["mode"], current) != current


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    try:
        return _check(params, ctx)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise ModuleError(f"archive {params['src']} is damaged: {exc}") from None


def _check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    dest = params["dest"]
    if params.get("creates") and os.path.exists(params["creates"]):
        return {"skip": f"{params['creates']} exists"}
    src = source_of(params, ctx)
    if not os.path.isfile(src):
        where = "on the box" if src == params["src"] or os.path.isabs(params["src"]) else "in the role's files/"
        raise ModuleError(f"archive {params['src']} not found {where} ({src})")
    strip = strip_components(params, zipfile.is_zipfile(src))
    if not os.path.isdir(dest):
        return {"skip": None, "src": src, "strip": strip, "dest_missing": True, "todo": []}
    uid, gid = (-1, -1)
    if params.get("owner") or params.get("group"):
        try:
            uid, gid = _ids(params)
        except ModuleError:
            uid, gid = (-1, -1)
    todo: List[str] = []
    for name, kind, _mode, size, payload in members(src, dest, strip):
        target = os.path.join(dest, name)
        differs = kind != "dest" and _differs(target, kind, size, payload)
        if differs or _owned_wrong(target, uid, gid) or _mode_wrong(target, kind, params):
            todo.append(name)
    return {"skip": None, "src": src, "strip": strip, "dest_missing": False, "todo": todo}


def _extract(src: str, dest: str, uid: int, gid: int, strip: int, params: Dict[str, Any]) -> None:
    for name, kind, mode, _size, payload in members(src, dest, strip):
        target = os.path.join(dest, name)
        parent = os.path.dirname(target)
        os.makedirs(parent, exist_ok=True)
        if kind == "dest":
            mode = stat.S_IMODE(os.stat(dest).st_mode)
        mode = member_mode(params, kind, mode)
        if kind == "dest":
            os.chmod(dest, mode)
        elif kind == "dir":
            if os.path.lexists(target) and not os.path.isdir(target):
                os.unlink(target)
            os.makedirs(target, exist_ok=True)
            os.chmod(target, mode)
        elif kind == "link":
            resolved = os.path.normpath(os.path.join(parent, payload))
            if os.path.isabs(payload) or not (resolved + "/").startswith(os.path.normpath(dest) + "/"):
                raise ModuleError(f"archive member {name!r} links outside {dest} ({payload}); refusing")
            if os.path.lexists(target):
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                else:
                    os.unlink(target)
            os.symlink(payload, target)
        else:
            if os.path.islink(target):
                os.unlink(target)
            tmp = target + ".kiln-tmp"
            with open(tmp, "wb") as handle:
                handle.write(payload())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        if uid != -1 or gid != -1:
            os.lchown(target, uid, gid)


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    dest = params["dest"]
    if state["skip"]:  # Ansible's action skips the task: registered skipped, as a false when gives
        return Result(False, f"skipped, since {state['skip']}", data={"skipped": True})
    if state["dest_missing"] and not ctx.check_mode:
        raise ModuleError(f"dest {dest} is not a directory (create it first with file: state=directory)")
    todo: List[str] = state["todo"]
    if not todo and not state["dest_missing"]:
        return Result(False, f"{dest} already has the content of {params['src']}")
    listed: Optional[List[str]] = todo[:MAX_LISTED] + (
        [f"... {len(todo) - MAX_LISTED} more"] if len(todo) > MAX_LISTED else []
    )
    diff = {"before": {"differs": listed or ["(dest missing)"]}, "after": {"unpacked": params["src"]}}
    msg = f"unpacked {params['src']} into {dest} ({len(todo)} members differed)"
    if ctx.check_mode:
        return Result(True, f"{msg} (check mode)", diff=diff)
    uid, gid = _ids(params)
    try:
        _extract(state["src"], dest, uid, gid, state["strip"], params)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise ModuleError(f"archive {params['src']} is damaged: {exc}") from None
    return Result(True, msg, diff=diff, data={"dest": dest, "changed_members": todo})
