"""Keep a block of lines between two marker lines in a file (or remove it).

The markers are ``marker`` with ``{mark}`` replaced by ``marker_begin`` / ``marker_end``;
the block between them is replaced as a whole. An empty ``block`` removes the markers too.

Example::

    - block_in_file:
        path: /etc/hosts
        block: |
          10.0.0.10 db
          10.0.0.11 cache
"""

from __future__ import annotations

from typing import Any, Dict, List

from .. import textfile
from ..api import Context, ModuleError, Result
from ..modules import line_in_file as lif

SCHEMA = {
    "description": "Insert, update or remove a block of lines between kiln's marker lines in a file.",
    "args": {
        "path": {"type": "path", "required": True, "aliases": ["dest", "name"], "description": "The file."},
        "block": {
            "type": "str",
            "default": "",
            "aliases": ["content"],
            "description": "The lines to keep between the markers; empty removes the block.",
        },
        "marker": {
            "type": "str",
            "default": "# {mark} KILN MANAGED BLOCK",
            "description": "Marker line template; {mark} becomes marker_begin or marker_end. Give each "
            "block in one file its own marker.",
        },
        "marker_begin": {"type": "str", "default": "BEGIN", "description": "{mark} of the first marker line."},
        "marker_end": {"type": "str", "default": "END", "description": "{mark} of the last marker line."},
        "state": {
            "type": "str",
            "choices": ["present", "absent"],
            "default": "present",
            "description": "present: the block is there; absent: block and markers are removed.",
        },
        "insertafter": {
            "type": "str",
            "description": "A new block goes after the last line matching this regexp, or EOF (default).",
        },
        "insertbefore": {
            "type": "str",
            "description": "A new block goes before the last line matching this regexp, or BOF.",
        },
        **textfile.args(),
    },
    "mutually_exclusive": [["insertafter", "insertbefore"]],
    "check_mode": "full",
    "diff": True,
    "example": "- block_in_file:\n    path: /etc/hosts\n    block: |\n      10.0.0.10 db\n",
}

check = textfile.check


def edit(params: Dict[str, Any], text: str) -> str:
    if "{mark}" not in params["marker"]:
        raise ModuleError("marker must contain {mark}")
    begin = params["marker"].replace("{mark}", params["marker_begin"])
    end = params["marker"].replace("{mark}", params["marker_end"])
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == begin), None)
    stop = next((i for i, ln in enumerate(lines) if ln.rstrip() == end and (start is None or i > start)), None)
    block: List[str] = params["block"].splitlines()
    wanted = [] if params["state"] == "absent" or not block else [begin, *block, end]
    if start is not None and stop is not None:
        new = lines[:start] + wanted + lines[stop + 1 :]
    elif not wanted:
        return text
    else:
        index = len(lines)
        after, before = params.get("insertafter"), params.get("insertbefore")
        if before == "BOF":
            index = 0
        elif before:
            found = lif._find(lines, lif._compile(before, "insertbefore"), False)
            index = found if found is not None else index
        elif after and after != "EOF":
            found = lif._find(lines, lif._compile(after, "insertafter"), False)
            index = found + 1 if found is not None else index
        new = lines[:index] + wanted + lines[index:]
    if new == lines:
        return text
    return "\n".join(new) + ("\n" if new else "")


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    removing = params["state"] == "absent" or not params["block"]
    return textfile.apply_edit(
        params,
        state,
        ctx,
        edit,
        removing=removing,
        nothing_to_remove="no block to remove",
        unchanged=f"block already {params['state'] if params['block'] else 'absent'}",
        describe=lambda old: "block removed" if removing else "block written",
    )
