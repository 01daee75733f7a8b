"""Check a local group: exists (or not), gid.

Example::

    - group: deploy
    - group: {name: deploy, gid: 2000}
"""

from __future__ import annotations

import grp
from typing import Any, Dict, Tuple

from ..api import Context

SCHEMA = {
    "description": "A local group exists (or not) with the given gid.",
    "free_form": "name",
    "args": {
        "name": {"type": "str", "required": True, "description": "Group name."},
        "exists": {"type": "bool", "default": True, "description": "true: the group exists; false: it does not."},
        "gid": {"type": "int", "description": "Group id."},
    },
    "example": "- group: deploy\n- group: {name: deploy, gid: 2000}",
}


def probe(params: Dict[str, Any], ctx: Context) -> Tuple[bool, str]:
    name = params["name"]
    try:
        entry = grp.getgrnam(name)
    except KeyError:
        return not params["exists"], f"group {name} does not exist"
    seen = f"group {name}: gid {entry.gr_gid}"
    if not params["exists"]:
        return False, f"{seen} (wanted absent)"
    if params.get("gid") is not None and params["gid"] != entry.gr_gid:
        return False, f"{seen} (wanted gid {params['gid']})"
    return True, seen
