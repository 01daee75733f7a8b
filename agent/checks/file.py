"""Check a path: exists (or not), type, mode, owner, group, content substrings.

Example::

    - file: /etc/nginx/nginx.conf
    - file: {path: /srv/www, filetype: directory, owner: www-data, mode: "0755"}
"""

from __future__ import annotations

import os
from typing import Any, Dict, Tuple

from ..api import Context, as_list, parse_mode
from ..modules import file as filemod

SCHEMA = {
    "description": "A path exists (or not) with the given type, mode, owner and group; a file contains strings.",
    "free_form": "path",
    "args": {
        "path": {"type": "path", "required": True, "description": "The path (symlinks are not followed)."},
        "exists": {"type": "bool", "default": True, "description": "true: the path exists; false: it does not."},
        "filetype": {"type": "str", "choices": ["file", "directory", "symlink"], "description": "Its type."},
        "mode": {"type": "mode", "description": 'Its mode, quoted octal ("0644").'},
        "owner": {"type": "str", "description": "Owning user name."},
        "group": {"type": "str", "description": "Owning group name."},
        "contains": {"type": "list", "elements": "str", "description": "Substrings the file must contain."},
        "linked_to": {"type": "str", "description": "A symlink's target (as stored)."},
    },
    "example": '- file: /etc/nginx/nginx.conf\n- file: {path: /srv/www, filetype: directory, mode: "0755"}',
}


def probe(params: Dict[str, Any], ctx: Context) -> Tuple[bool, str]:
    path = params["path"]
    state = filemod.check({"path": path}, ctx)
    if state is None:
        return not params["exists"], f"{path} does not exist"
    kind = "symlink" if state["state"] == "link" else state["state"]
    seen = f"{path}: {kind} {state['mode']} {state['owner']}:{state['group']}"
    if kind == "symlink":
        seen += f" -> {state.get('src')}"
    if not params["exists"]:
        return False, f"{seen} (wanted absent)"
    problems = []
    if params.get("filetype") and params["filetype"] != kind:
        problems.append(f"is a {kind}, not a {params['filetype']}")
    if params.get("mode"):
        wanted = "{:04o}".format(parse_mode(params["mode"], int(state["mode"], 8)))
        if wanted != state["mode"]:
            problems.append(f"mode {state['mode']} (wanted {wanted})")
    for key in ("owner", "group"):
        if params.get(key) and params[key] != state[key]:
            problems.append(f"{key} {state[key]} (wanted {params[key]})")
    if params.get("linked_to") is not None and state.get("src") != params["linked_to"]:
        problems.append(f"links to {state.get('src')!r} (wanted {params['linked_to']!r})")
    wanted_text = as_list(params.get("contains"))
    if wanted_text:
        if not os.path.isfile(path):
            problems.append("is not a regular file to search")
        else:
            with open(path, "rb") as handle:
                text = handle.read().decode("utf-8", errors="replace")
            missing = [s for s in wanted_text if s not in text]
            if missing:
                problems.append("does not contain " + ", ".join(repr(s) for s in missing))
    if problems:
        return False, f"{seen}: " + "; ".join(problems)
    return True, seen
