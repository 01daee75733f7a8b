"""Put a file from the role's ``files/`` (or inline ``content``) at ``dest``.

Content is compared by sha256; the file is written atomically (temp file, optional
``validate``, rename) only when it differs. Owner, group and mode are set like ``file``.

Example::

    - copy: {src: motd, dest: /etc/motd, mode: "0644"}
    - copy: {content: "ok\\n", dest: /srv/health, owner: www-data}
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from typing import Any, Dict, Tuple

from ..api import Context, ModuleError, Result, atomic_write, backup_local, parse_mode, unified_diff
from ..modules import file as filemod

SCHEMA = {
    "description": "Copy a file from the role's files/ (or inline content) to dest; written only when the "
    "content differs.",
    "args": {
        "src": {
            "type": "path",
            "relative": True,
            "description": "File in the role's files/ directory (or an absolute path on the box).",
        },
        "content": {
            "type": "raw",
            "description": "The file's content, inline (instead of src); a mapping or list is written as JSON, as "
            "Ansible's copy writes it.",
        },
        "dest": {
            "type": "path",
            "required": True,
            "aliases": ["path"],
            "description": "Destination path; a directory (or a path ending in /) gets src's name.",
        },
        "mode": {"type": "mode", "description": 'Mode, quoted octal ("0644") or symbolic ("u+x").'},
        "owner": {"type": "str", "description": "Owning user name."},
        "group": {"type": "str", "description": "Owning group name."},
        "backup": {"type": "bool", "default": False, "description": "Keep the replaced file as <dest>.<timestamp>~."},
        "validate": {
            "type": "str",
            "description": "Command run on the new content before it replaces dest; %s is the "
            'temp file (e.g. "visudo -cf %s").',
        },
        "force": {
            "type": "bool",
            "default": True,
            "description": "false: only create dest when missing, never replace its content.",
        },
        "remote_src": {
            "type": "bool",
            "default": False,
            "description": "src is a file already on the box (an absolute path), not in the role's files/; a file it "
            "replaces takes the source's mode, as in Ansible.",
        },
        "decrypt": {
            "type": "bool",
            "default": True,
            "description": "A vault-encrypted src in files/ is refused when the step runs (kiln decrypts !vault "
            "values, not files, and the box has no vault password); false copies its ciphertext as it is.",
        },
    },
    "mutually_exclusive": [["src", "content"]],
    "required_one_of": [["src", "content"]],
    "check_mode": "full",
    "diff": True,
    "example": '- copy: {src: motd, dest: /etc/motd, mode: "0644"}',
}

MAX_DIFF_BYTES = 256 * 1024


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_dest(dest: str, src: str | None) -> str:
    if src and (dest.endswith("/") or os.path.isdir(dest)):
        return os.path.join(dest, os.path.basename(src.rstrip("/")))
    return dest


def dest_state(dest: str, ctx: Context) -> Dict[str, Any]:
    """What is at dest now: missing, a directory, or a file with its sha256 and attributes."""
    attrs = filemod.check({"path": dest}, ctx)
    state: Dict[str, Any] = {"dest": dest, "attrs": attrs}
    if attrs is None:
        return state
    if os.path.isdir(dest):
        raise ModuleError(f"{dest} is a directory")
    state["sha256"] = sha256_of(dest)
    state["size"] = os.path.getsize(dest)
    return state


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    return dest_state(resolve_dest(params["dest"], params.get("src")), ctx)


def _text(data: bytes) -> str | None:
    if len(data) > MAX_DIFF_BYTES or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def content_diff(dest: str, before: bytes | None, after: bytes) -> str:
    old = _text(before) if before is not None else ""
    new = _text(after)
    if old is None or new is None:
        return f"binary or large file {dest} differs ({len(before or b'')} -> {len(after)} bytes)\n"
    return unified_diff(old, new, dest)


def put_content(
    params: Dict[str, Any], data: bytes, state: Dict[str, Any], ctx: Context, source_mode: int | None = None
) -> Result:
    """Write ``data`` at state['dest'] when it differs, then owner/group/mode (copy and template). ``source_mode``:
    the mode a replaced file takes when the step gives none (remote_src: the source's, as Ansible's copystat)."""
    dest = state["dest"]
    exists = state["attrs"] is not None
    new_sha = hashlib.sha256(data).hexdigest()
    write = not exists or (params.get("force", True) and state["sha256"] != new_sha)
    wanted = filemod.attributes_wanted(params, state["attrs"])
    if not exists and not params.get("mode"):
        wanted.pop("mode", None)
    if not write and not wanted:
        return Result(False, f"{dest} is as wanted", data={"dest": dest, "sha256": state.get("sha256")})
    diff: Dict[str, Any] = {}
    changes = []
    if write:
        before = None
        if exists:
            with open(dest, "rb") as handle:
                before = handle.read(MAX_DIFF_BYTES + 1)
        diff["unified"] = content_diff(dest, before, data)
        changes.append("created" if not exists else "content changed")
    if wanted:
        diff["before"] = {k: state["attrs"].get(k) for k in wanted} if exists else "absent"
        diff["after"] = dict(wanted)
        changes.append(", ".join(f"{k} {v}" for k, v in sorted(wanted.items())))
    msg = f"{dest}: " + "; ".join(changes)
    out: Dict[str, Any] = {"dest": dest, "sha256": new_sha if write else state.get("sha256")}
    if ctx.check_mode:
        return Result(True, f"{msg} (check mode: not written)", diff=diff, data=out)
    if write:
        parent = os.path.dirname(dest) or "."
        if not os.path.isdir(parent):
            raise ModuleError(f"directory {parent} does not exist (create it first with file: state=directory)")
        if exists and params.get("backup"):
            out["backup_file"] = backup_local(dest)
        current = int(state["attrs"]["mode"], 8) if exists else 0o644
        # Ansible's atomic_move: a new file gets the umask's mode; a replaced one (remote_src) its source's
        mode = parse_mode(params["mode"], current) if params.get("mode") else source_mode if exists else None
        atomic_write(dest, data, mode=mode, validate=params.get("validate"), ctx=ctx)
    if wanted:
        filemod.set_attributes(dest, wanted)
    return Result(True, msg, diff=diff, data=out)


def content_bytes(content: Any) -> bytes:
    """``content`` as Ansible's copy action writes it: a mapping or a list as ``json.dumps`` gives it, any
    other value as its text."""
    if isinstance(content, (dict, list)):
        return json.dumps(content).encode("utf-8")
    return (content if isinstance(content, str) else str(content)).encode("utf-8")


VAULT_HEADER = b"$ANSIBLE_VAULT;"


def source_bytes(params: Dict[str, Any], ctx: Context) -> Tuple[bytes, int | None]:
    """src's bytes: the role's file from the bundle, or with remote_src a file on the box (never decrypted, as in
    Ansible, whose decrypt applies to the controller's files only)."""
    src = params["src"]
    remote = params.get("remote_src")
    if remote and not os.path.isabs(src):
        raise ModuleError(f"src {src}: with remote_src, src is an absolute path on the box")
    path = src if remote else ctx.source_path(src, "files")
    where = "on the box" if remote or os.path.isabs(src) else f"in the role's files/ ({path})"
    if os.path.isdir(path):
        raise ModuleError(f"src {src} is a directory; copy takes one file (use unarchive for trees)")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ModuleError(f"src {src} not found {where}") from None
    if not remote and params.get("decrypt", True) and data.startswith(VAULT_HEADER):
        raise ModuleError(
            f"src {src} is a vault-encrypted file: kiln decrypts !vault values on the controller, not files "
            "(put the secret in a !vault variable and use content:, or set decrypt: false to copy the ciphertext)"
        )
    return data, stat.S_IMODE(os.stat(path).st_mode) if remote else None


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    if params.get("content") is not None:
        return put_content(params, content_bytes(params["content"]), state, ctx)
    data, source_mode = source_bytes(params, ctx)
    return put_content(params, data, state, ctx, source_mode)
