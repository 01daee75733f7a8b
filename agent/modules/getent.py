"""Ansible's ``getent``: a database of the name service (passwd, group, hosts, services, ...) as facts.

``getent DATABASE [KEY] [-s SERVICE]``, each line split at ``split`` (``:`` for passwd, shadow, group and
gshadow; else blanks): ``getent_<database>`` maps each line's first field to the rest, a list of such
lists when a key repeats, as ansible-core files them (``getent_passwd.root[5]`` is root's home). A key
that is not there fails, unless ``fail_key: false`` (then it maps to null). Changes nothing.

Example::

    - getent: {database: passwd, key: root}
"""

from __future__ import annotations

import shutil
from typing import Any, Dict, List

from ..api import Context, ModuleError, Result

COLON = ("passwd", "shadow", "group", "gshadow")
FAILURES = {
    1: "Missing arguments, or database unknown.",
    2: "One or more supplied key could not be found in the database.",
    3: "Enumeration not supported on this database.",
}

SCHEMA = {
    "description": "Ansible's getent: read a name service database (passwd, group, hosts, ...) into facts "
    "getent_<database>.",
    "args": {
        "database": {"type": "str", "required": True, "description": "The database: passwd, group, hosts, ..."},
        "key": {"type": "str", "description": "One entry only (fails when it is not there, unless fail_key: false)."},
        "service": {"type": "str", "description": "The NSS service to ask (getent -s)."},
        "split": {
            "type": "str",
            "description": "The field separator: ':' for passwd/shadow/group/gshadow, else blanks.",
        },
        "fail_key": {"type": "bool", "default": True, "description": "Fail when key is not there."},
    },
    "check_mode": "full",
    "diff": False,
    "example": "- getent: {database: passwd, key: root}",
}


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    found = shutil.which("getent")
    if not found:
        raise ModuleError("Failed to find required executable getent")
    argv = [found, params["database"]] + ([params["key"]] if params.get("key") is not None else [])
    argv += ["-s", params["service"]] if params.get("service") is not None else []
    done = ctx.run(argv, check=False)
    return {"rc": done.rc, "stdout": done.stdout}


def entries(text: str, split: Any) -> Dict[str, Any]:
    """Each line's first field -> the others; a repeated first field -> a list of those lists."""
    table: Dict[str, Any] = {}
    seen: Dict[str, int] = {}
    for line in text.splitlines():
        record: List[str] = line.split(split)
        head = record[0]
        if head in seen:
            if seen[head] == 1:
                table[head] = [table[head]]
            table[head].append(record[1:])
            seen[head] += 1
        else:
            table[head] = record[1:]
            seen[head] = 1
    return table


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    database = params["database"]
    tree = f"getent_{database}"
    split = params.get("split")
    if split is None and database in COLON:
        split = ":"
    if state["rc"] == 0:
        return Result(False, f"read {database}", data={"ansible_facts": {tree: entries(state["stdout"], split)}})
    msg = FAILURES.get(state["rc"], "Unexpected failure!")
    if state["rc"] == 2 and not params["fail_key"]:
        return Result(False, msg, data={"ansible_facts": {tree: {params.get("key"): None}}})
    raise ModuleError(msg, changed=False)
