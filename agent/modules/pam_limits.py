"""community.general's ``pam_limits``: one limit in /etc/security/limits.conf (or ``dest``), as the collection edits it.

Lines are read as the collection reads them: a line ``domain type item value [# comment]`` whose
first three fields are the step's is the limit (each such line is set); comments, blank lines and
other lines stay as they are; a missing limit is added at the end, tab-separated. ``use_max`` /
``use_min`` keep the larger / smaller of the value there and the one given (``unlimited``,
``infinity`` and ``-1`` are no limit). Without ``comment``, a changed or added line takes the
comment of the first limit line that has one, as the collection does. Values are checked as
limits.conf(5) has them (nice and priority: -20 to 19). A missing file is created (mode 0644).

Example::

    - community.general.pam_limits: {domain: '*', limit_type: soft, limit_item: nofile, value: "65536"}
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Tuple

from ..api import Context, ModuleError, Result, atomic_write, backup_local, unified_diff

ITEMS = [
    "core", "data", "fsize", "memlock", "nofile", "rss", "stack", "cpu", "nproc", "as", "maxlogins",
    "maxsyslogins", "priority", "locks", "sigpending", "msgqueue", "nice", "rtprio", "chroot",
]  # fmt: skip
UNLIMITED = ("unlimited", "infinity", "-1")
BLANKS = re.compile(r"\s+")

SCHEMA = {
    "description": "community.general's pam_limits: set one limit in /etc/security/limits.conf (or dest).",
    "args": {
        "domain": {"type": "str", "required": True, "description": "A user, @group, * or a uid/gid range."},
        "limit_type": {
            "type": "str",
            "required": True,
            "choices": ["soft", "hard", "-"],
            "description": "soft, hard or -.",
        },
        "limit_item": {"type": "str", "required": True, "choices": ITEMS, "description": "The limited resource."},
        "value": {"type": "str", "required": True, "description": "The limit: a number, or unlimited/infinity/-1."},
        "use_max": {"type": "bool", "default": False, "description": "Keep the larger of the value there and this."},
        "use_min": {"type": "bool", "default": False, "description": "Keep the smaller of the value there and this."},
        "backup": {
            "type": "bool",
            "default": False,
            "description": "Keep a copy of the file as it was (name.PID.YYYY-MM-DD@HH:MM:SS~), every run, as the "
            "collection does.",
        },
        "dest": {"type": "path", "default": "/etc/security/limits.conf", "description": "The limits file."},
        "comment": {"type": "str", "default": "", "description": "A comment at the end of the limit's line."},
    },
    "mutually_exclusive": [["use_max", "use_min"]],
    "check_mode": "full",
    "diff": True,
    "example": "- pam_limits: {domain: '*', limit_type: soft, limit_item: nofile, value: \"65536\"}",
}


def valid_value(item: str, value: str, prefix: str = "") -> None:
    if item in ("nice", "priority"):
        try:
            fits = -20 <= int(value) <= 19
        except ValueError:
            fits = False
        if not fits:
            raise ModuleError(
                f"{prefix} Value of {value!r} for item {item!r} is invalid. Value must be a number in the range -20 to "
                "19 inclusive. Refer to the limits.conf(5) manual pages for more details."
            )
    elif not (value in UNLIMITED or value.isdigit()):
        raise ModuleError(
            f"{prefix} Value of {value!r} for item {item!r} is invalid. Value must either be 'unlimited', 'infinity' "
            "or -1, all of which indicate no limit, or a limit of 0 or larger. Refer to the limits.conf(5) manual "
            "pages for more details."
        )


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    dest = params["dest"]
    if os.path.isfile(dest):
        if not os.access(dest, os.W_OK):
            raise ModuleError(f"{dest} is not writable. Use sudo")
        with open(dest, "rb") as handle:
            return {"exists": True, "lines": [line.decode() for line in handle.read().splitlines(keepends=True)]}
    folder = os.path.dirname(dest)
    if not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
        raise ModuleError(f"directory {folder} is not writable (check presence, access rights, use sudo)")
    return {"exists": False, "lines": []}


def chosen(params: Dict[str, Any], there: str) -> str:
    """The value to write over ``there``: the step's, or the larger/smaller of both."""
    value = params["value"]
    there_unlimited, value_unlimited = there in UNLIMITED, value in UNLIMITED
    if params["use_max"]:
        if there_unlimited:
            return there
        return value if value_unlimited else str(max(int(value), int(there)))
    if params["use_min"]:
        if there_unlimited and value_unlimited:
            return there
        if there_unlimited or value_unlimited:
            return value if there_unlimited else there
        return str(min(int(value), int(there)))
    return value


def edit(params: Dict[str, Any], lines: List[str], dest: str) -> Tuple[str, bool, str]:
    """(the new text, whether the limit changed, the limit's line)."""
    key = (params["domain"], params["limit_type"], params["limit_item"])
    comment, out, found, changed, message = params["comment"], [], False, False, ""
    value = params["value"]
    for line in lines:
        words = BLANKS.sub(" ", line).strip()
        if line.startswith("#") or not words:
            out.append(line)
            continue
        fields = words.split("#", 1)[0].rstrip().split(" ")
        comment = comment or (line.split("#", 1)[1] if "#" in line else "")
        if len(fields) != 4:
            out.append(line)
            continue
        valid_value(fields[2], fields[3], prefix=f"Invalid configuration found in '{dest}'.")
        if tuple(fields[:3]) != key:
            out.append(line)
            continue
        found = True
        value = params["value"] if params["value"] == fields[3] else chosen(params, fields[3])
        if value == fields[3]:
            message = line
            out.append(line)
            continue
        changed = True
        comment = "\t#" + comment if comment else comment
        message = f"{key[0]}\t{key[1]}\t{key[2]}\t{value}{comment}\n"
        out.append(message)
    if not found:
        changed = True
        comment = "\t#" + comment if comment else comment
        message = f"{key[0]}\t{key[1]}\t{key[2]}\t{value}{comment}\n"
        out.append(message)
    return "".join(out), changed, message


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    dest = params["dest"]
    valid_value(params["limit_item"], params["value"])
    before = "".join(state["lines"])
    after, changed, message = edit(params, state["lines"], dest)
    data: Dict[str, Any] = {}
    changed = changed or not state["exists"]
    if params["backup"]:
        data["backup_file"] = backup_local(dest) if state["exists"] and not ctx.check_mode else ""
    if not ctx.check_mode:
        atomic_write(dest, after.encode(), mode=None if state["exists"] else 0o644)  # rewritten every run, as there
    diff = {"unified": unified_diff(before, after, dest)} if after != before else None
    return Result(changed, message, diff=diff, data=data)
