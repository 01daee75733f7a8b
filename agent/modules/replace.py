"""Ansible's ``replace``: every match of a regular expression in a file replaced, as ansible-core does it.

Python's ``re`` (multiline) with its replacement syntax (``\\1``, ``\\g<name>``), the same engine as
ansible-core's module. ``after``/``before`` limit the edit to the text after the first match of
``after`` and before the first match of ``before`` after it (dot matches newlines there); when they
do not match, nothing changes. The file is written only when the text changes (through a temporary
file, ``validate`` first, owner and mode kept); owner, group and mode are then set like ``file``.

Example::

    - replace: {path: /etc/ssh/sshd_config, regexp: '^#?PermitRootLogin .*$', replace: PermitRootLogin no}
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict

from ..api import Context, ModuleError, Result, atomic_write, backup_local, unified_diff
from . import file as filemod

SCHEMA = {
    "description": "Ansible's replace: replace every match of a regular expression in a file (Python's re).",
    "args": {
        "path": {"type": "path", "required": True, "aliases": ["dest", "destfile", "name"], "description": "The file."},
        "regexp": {"type": "str", "required": True, "description": "The expression (multiline: ^ and $ per line)."},
        "replace": {"type": "str", "default": "", "description": "The replacement (\\1, \\g<name> for groups)."},
        "after": {"type": "str", "description": "Only after the first match of this expression."},
        "before": {"type": "str", "description": "Only before the first match of this expression."},
        "backup": {
            "type": "bool",
            "default": False,
            "description": "Keep the old file as name.PID.YYYY-MM-DD@HH:MM:SS~ when it changes.",
        },
        "validate": {"type": "str", "description": "A command run on the new text first (%s: its file)."},
        "encoding": {"type": "str", "default": "utf-8", "description": "The file's character encoding."},
        "mode": {"type": "mode", "description": "Mode, quoted octal or symbolic."},
        "owner": {"type": "str", "description": "Owner."},
        "group": {"type": "str", "description": "Group."},
    },
    "check_mode": "full",
    "diff": True,
    "example": "- replace: {path: /etc/ssh/sshd_config, regexp: '^#?PermitRootLogin .*$', replace: PermitRootLogin no}",
}


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    path = params["path"]
    if os.path.isdir(path):
        raise ModuleError(f"Path {path} is a directory !", rc=256, changed=False)
    if not os.path.exists(path):
        raise ModuleError(f"Path {path} does not exist !", rc=257, changed=False)
    with open(path, "rb") as handle:
        try:
            text = handle.read().decode(params["encoding"])
        except (UnicodeDecodeError, LookupError) as exc:
            raise ModuleError(f"Unable to read {path} as {params['encoding']}: {exc}", changed=False) from None
    return {"text": text, "attrs": filemod.check({"path": path}, ctx)}


def section_of(params: Dict[str, Any], text: str) -> Any:
    """(start, end) of the text to edit and the pattern used; None when after/before do not match."""
    after, before = params.get("after"), params.get("before")
    if after and before:
        pattern = f"{after}(?P<subsection>.*?){before}"
    elif after:
        pattern = f"{after}(?P<subsection>.*)"
    elif before:
        pattern = f"(?P<subsection>.*){before}"
    else:
        return (0, len(text)), ""
    found = re.search(re.compile(pattern, re.DOTALL), text)
    return ((found.start("subsection"), found.end("subsection")) if found else None), pattern


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    path, text = params["path"], state["text"]
    span, pattern = section_of(params, text)
    if span is None:
        msg = f"Pattern for before/after params did not match the given file: {pattern}"
        return Result(False, msg, data={"rc": 0})
    section = text[span[0] : span[1]]
    try:
        replaced, count = re.subn(re.compile(params["regexp"], re.MULTILINE), params["replace"], section)
    except re.error as exc:
        raise ModuleError(f"Unable to process replace due to error: {exc}", changed=False) from None
    changed = count > 0 and replaced != section
    data: Dict[str, Any] = {"rc": 0}
    msg = ""
    diff = None
    if changed:
        after = text[: span[0]] + replaced + text[span[1] :]
        msg = f"{count} replacements made"
        diff = {"unified": unified_diff(text, after, path)}
        if not ctx.check_mode:
            if params.get("validate") and "%s" not in params["validate"]:
                raise ModuleError(f"validate must contain %s: {params['validate']}", changed=False)
            if params["backup"]:
                data["backup_file"] = backup_local(path)
            atomic_write(
                os.path.realpath(path), after.encode(params["encoding"]), validate=params.get("validate"), ctx=ctx
            )
    wanted = filemod.attributes_wanted(params, state["attrs"])
    if wanted:
        if not ctx.check_mode:
            filemod.set_attributes(path, wanted)
        msg = (msg + " and " if changed else "") + "ownership, perms or SE linux context changed"
        changed = True
    return Result(changed, msg, diff=diff, data=data)
