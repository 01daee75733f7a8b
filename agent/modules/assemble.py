"""Ansible's ``assemble``: a file made of the fragments in a directory on the box, as ansible-core makes it.

The fragments are the directory's regular files in sorted name order (``regexp``: only names it matches;
``ignore_hidden``: no dot files), joined as ansible-core's module joins them: a newline after a fragment
that does not end with one, ``delimiter`` (escapes such as ``\\n`` decoded) between fragments and a
newline after it. The file is replaced only when its content differs (``validate`` first, ``backup``),
then owner, group and mode are set like ``file``.

Example::

    - assemble: {src: /etc/ssh/sshd_config.d, dest: /etc/ssh/sshd_config, mode: "0600"}
"""

from __future__ import annotations

import codecs
import os
import re
from typing import Any, Dict, List

from ..api import Context, ModuleError, Result, atomic_write, backup_local, unified_diff
from . import file as filemod

SCHEMA = {
    "description": "Ansible's assemble: a file made of a directory's fragments on the box, in name order.",
    "args": {
        "src": {"type": "path", "required": True, "description": "The directory of fragments (on the box)."},
        "dest": {"type": "path", "required": True, "description": "The file to write."},
        "delimiter": {"type": "str", "description": "Written between fragments (\\n and such decoded)."},
        "regexp": {"type": "str", "description": "Only fragments whose name this expression finds (Python's re)."},
        "ignore_hidden": {"type": "bool", "default": False, "description": "Leave out names starting with a dot."},
        "remote_src": {
            "type": "bool",
            "default": True,
            "choices": [True],
            "description": "The fragments are on the box (the role's own files/ is not supported yet).",
        },
        "backup": {
            "type": "bool",
            "default": False,
            "description": "Keep the old file as name.PID.YYYY-MM-DD@HH:MM:SS~ when it changes.",
        },
        "validate": {"type": "str", "description": "A command run on the new file first (%s: its path)."},
        "mode": {"type": "mode", "description": "Mode, quoted octal or symbolic."},
        "owner": {"type": "str", "description": "Owner."},
        "group": {"type": "str", "description": "Group."},
    },
    "check_mode": "full",
    "diff": True,
    "example": '- assemble: {src: /etc/ssh/sshd_config.d, dest: /etc/ssh/sshd_config, mode: "0600"}',
}


def fragments(src: str, regexp: str | None, ignore_hidden: bool) -> List[str]:
    """The fragment files in the order ansible-core reads them."""
    try:
        pattern = re.compile(regexp) if regexp is not None else None
    except re.error as exc:
        raise ModuleError(f'Invalid Regexp ({exc}) in "{regexp}"', changed=False) from None
    chosen = []
    for name in sorted(os.listdir(src)):
        if pattern is not None and not pattern.search(name):
            continue
        path = os.path.join(src, name)
        if not os.path.isfile(path) or (ignore_hidden and name.startswith(".")):
            continue
        chosen.append(path)
    return chosen


def assembled(paths: List[str], delimiter: str | None) -> bytes:
    """The fragments joined by ansible-core's rules (its assemble_from_fragments)."""
    out = bytearray()
    separator = codecs.escape_decode(delimiter.encode())[0] if delimiter else b""
    add_newline = False  # the previous fragment did not end with one (an empty fragment neither)
    for position, path in enumerate(paths):
        with open(path, "rb") as handle:
            content = handle.read()
        if add_newline:
            out += b"\n"
        if position and separator:
            out += separator if separator.endswith(b"\n") else separator + b"\n"
        out += content
        add_newline = not content.endswith(b"\n")
    return bytes(out)


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    src, dest = params["src"], params["dest"]
    if not os.path.exists(src):
        raise ModuleError(f"Source ({src}) does not exist", changed=False)
    if not os.path.isdir(src):
        raise ModuleError(f"Source ({src}) is not a directory", changed=False)
    current = None
    if os.path.isfile(dest):
        with open(dest, "rb") as handle:
            current = handle.read()
    return {"content": current, "attrs": filemod.check({"path": dest}, ctx)}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    dest = params["dest"]
    if params.get("validate") and "%s" not in params["validate"]:
        raise ModuleError(f"validate must contain %s: {params['validate']}", changed=False)
    wanted = assembled(fragments(params["src"], params.get("regexp"), params["ignore_hidden"]), params.get("delimiter"))
    changed = wanted != state["content"]
    data: Dict[str, Any] = {}
    diff = None
    msg = "OK"
    if changed:
        before = (state["content"] or b"").decode(errors="replace")
        diff = {"unified": unified_diff(before, wanted.decode(errors="replace"), dest)}
        msg = f"assembled {dest}"
        if not ctx.check_mode:
            if params["backup"] and state["content"] is not None:
                data["backup_file"] = backup_local(dest)
            atomic_write(os.path.realpath(dest), wanted, validate=params.get("validate"), ctx=ctx)
    attrs = filemod.attributes_wanted(params, state["attrs"])
    if attrs:
        if not ctx.check_mode and os.path.exists(dest):
            filemod.set_attributes(dest, attrs)
        changed = True
    return Result(changed, msg, diff=diff, data=data)
