"""Manage a local group with groupadd / groupmod / groupdel.

Example::

    - group: {name: deploy, gid: 2000}
"""

from __future__ import annotations

import grp
from typing import Any, Dict

from ..api import Context, Result

SCHEMA = {
    "description": "Create, change (gid) or remove a local group.",
    "args": {
        "name": {"type": "str", "required": True, "description": "The group name."},
        "state": {
            "type": "str",
            "choices": ["present", "absent"],
            "default": "present",
            "description": "present: the group exists; absent: it does not.",
        },
        "gid": {"type": "int", "description": "Group id."},
        "system": {"type": "bool", "default": False, "description": "A system group (on creation only)."},
    },
    "check_mode": "full",
    "diff": True,
    "example": "- group: {name: deploy, gid: 2000}",
}


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any] | None:
    try:
        entry = grp.getgrnam(params["name"])
    except KeyError:
        return None
    return {"name": entry.gr_name, "gid": entry.gr_gid, "members": sorted(entry.gr_mem)}


def apply(params: Dict[str, Any], state: Dict[str, Any] | None, ctx: Context) -> Result:
    name = params["name"]
    if params["state"] == "absent":
        if state is None:
            return Result(False, f"group {name} is already absent")
        if not ctx.check_mode:
            ctx.run(["groupdel", name])
        return Result(True, f"removed group {name}", diff={"before": {"gid": state["gid"]}, "after": "absent"})
    if state is None:
        after = {"gid": params["gid"]} if params.get("gid") is not None else {"gid": "(next free)"}
        if not ctx.check_mode:
            argv = ["groupadd"]
            if params.get("gid") is not None:
                argv += ["-g", str(params["gid"])]
            if params["system"]:
                argv.append("-r")
            ctx.run(argv + [name])
            after = {"gid": grp.getgrnam(name).gr_gid}
        return Result(
            True, f"created group {name}", diff={"before": "absent", "after": after}, data={"gid": after["gid"]}
        )
    if params.get("gid") is not None and params["gid"] != state["gid"]:
        if not ctx.check_mode:
            ctx.run(["groupmod", "-g", str(params["gid"]), name])
        return Result(
            True,
            f"group {name}: gid {state['gid']} -> {params['gid']}",
            diff={"before": {"gid": state["gid"]}, "after": {"gid": params["gid"]}},
            data={"gid": params["gid"]},
        )
    return Result(False, f"group {name} is as wanted", data={"gid": state["gid"]})
