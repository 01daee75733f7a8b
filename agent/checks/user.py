"""Check a local user: exists (or not), uid, groups, shell, home.

Example::

    - user: deploy
    - user: {name: deploy, groups: [sudo], shell: /bin/bash}
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from ..api import Context
from ..modules.user import read_user

SCHEMA = {
    "description": "A local user exists (or not) with the given uid, groups, shell and home.",
    "free_form": "name",
    "args": {
        "name": {"type": "str", "required": True, "description": "User name."},
        "exists": {"type": "bool", "default": True, "description": "true: the user exists; false: it does not."},
        "uid": {"type": "int", "description": "User id."},
        "groups": {
            "type": "list",
            "elements": "str",
            "description": "Groups the user must belong to (primary or supplementary).",
        },
        "shell": {"type": "str", "description": "Login shell."},
        "home": {"type": "str", "description": "Home directory."},
    },
    "example": "- user: deploy\n- user: {name: deploy, groups: [sudo], shell: /bin/bash}",
}


def probe(params: Dict[str, Any], ctx: Context) -> Tuple[bool, str]:
    name = params["name"]
    user = read_user(name)
    if user is None:
        return not params["exists"], f"user {name} does not exist"
    member_of = [user["group"]] + user["groups"]
    seen = f"user {name}: uid {user['uid']}, groups {','.join(member_of)}, shell {user['shell']}, home {user['home']}"
    if not params["exists"]:
        return False, f"{seen} (wanted absent)"
    problems = []
    for key in ("uid", "shell", "home"):
        if params.get(key) is not None and params[key] != user[key]:
            problems.append(f"{key} {user[key]} (wanted {params[key]})")
    missing = [g for g in params.get("groups") or [] if g not in member_of]
    if missing:
        problems.append("not in group(s) " + ", ".join(missing))
    if problems:
        return False, f"{seen}: " + "; ".join(problems)
    return True, seen
