"""Make sure one line is in a file (or is not), optionally replacing the line a regexp finds.

Semantics follow Ansible's ``lineinfile``:

- ``state: present`` with ``regexp``: the last matching line is replaced by ``line``; when
  nothing matches and ``line`` is not already there, ``line`` is inserted (``insertafter``
  / ``insertbefore``, default the end of the file). With ``backrefs`` nothing is inserted
  and ``line`` may use ``\\1`` groups of ``regexp``.
- ``state: present`` without ``regexp``: ``line`` is inserted unless an identical line exists.
- ``state: absent``: every line matching ``regexp`` (or equal to ``line``) is removed.

Example::

    - line_in_file: {path: /etc/ssh/sshd_config, regexp: "^#?PasswordAuthentication", line: "PasswordAuthentication no"}
"""

from __future__ import annotations

import re
from typing import Any, Dict, List

from .. import textfile
from ..api import Context, ModuleError, Result

SCHEMA = {
    "description": "Ensure a line is present in (or absent from) a file, replacing the line a regexp matches.",
    "args": {
        "path": {"type": "path", "required": True, "aliases": ["dest", "name"], "description": "The file."},
        "line": {"type": "str", "aliases": ["value"], "description": "The line wanted (state=present)."},
        "regexp": {
            "type": "str",
            "aliases": ["regex"],
            "description": "Python regular expression finding the line to replace (present) or the "
            "lines to remove (absent).",
        },
        "state": {
            "type": "str",
            "choices": ["present", "absent"],
            "default": "present",
            "description": "present: the line is there; absent: no matching line is.",
        },
        "insertafter": {
            "type": "str",
            "description": "Where a new line goes: after the last line matching this regexp, or EOF "
            "(default). When nothing matches: at the end.",
        },
        "insertbefore": {
            "type": "str",
            "description": "Where a new line goes: before the last line matching this regexp, or "
            "BOF. When nothing matches: at the end.",
        },
        "firstmatch": {
            "type": "bool",
            "default": False,
            "description": "insertafter/insertbefore use the first matching line, not the last.",
        },
        "backrefs": {
            "type": "bool",
            "default": False,
            "description": "line may use \\1 groups of regexp; nothing is inserted when regexp matches no line.",
        },
        **textfile.args(),
    },
    "mutually_exclusive": [["insertafter", "insertbefore"]],
    "required_one_of": [["line", "regexp"]],
    "required_if": [["state", "present", ["line"]], ["backrefs", True, ["regexp"]]],
    "check_mode": "full",
    "diff": True,
    "example": '- line_in_file: {path: /etc/ssh/sshd_config, regexp: "^#?PasswordAuthentication", '
    'line: "PasswordAuthentication no"}',
}


check = textfile.check


def _compile(pattern: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ModuleError(f"{what} is not a valid regular expression: {exc}") from None


def _find(lines: List[str], pattern: re.Pattern[str], first: bool) -> int | None:
    hits = [i for i, text in enumerate(lines) if pattern.search(text)]
    if not hits:
        return None
    return hits[0] if first else hits[-1]


def edit(params: Dict[str, Any], text: str) -> str:
    """The file's new text (equal to ``text`` when nothing needs changing)."""
    lines = text.splitlines()
    ends_with_newline = text.endswith("\n") or not text
    regexp = _compile(params["regexp"], "regexp") if params.get("regexp") else None
    if params["state"] == "absent":
        if regexp is not None:
            kept = [ln for ln in lines if not regexp.search(ln)]
        else:
            kept = [ln for ln in lines if ln != params["line"]]
        if len(kept) == len(lines):
            return text
        return "\n".join(kept) + ("\n" if kept and ends_with_newline else "")
    line = params["line"]
    if regexp is not None:
        hits = [i for i, ln in enumerate(lines) if regexp.search(ln)]
        if hits:
            index = hits[-1]
            new = line
            if params.get("backrefs"):
                match = regexp.search(lines[index])
                new = match.expand(line) if match else line
            if lines[index] == new:
                return text
            lines[index] = new
            return "\n".join(lines) + ("\n" if ends_with_newline else "")
        if params.get("backrefs"):
            return text
    if line in lines:
        return text
    index = len(lines)
    after, before = params.get("insertafter"), params.get("insertbefore")
    first = params.get("firstmatch", False)
    if before == "BOF":
        index = 0
    elif before:
        found = _find(lines, _compile(before, "insertbefore"), first)
        if found is not None:
            index = found
    elif after and after != "EOF":
        found = _find(lines, _compile(after, "insertafter"), first)
        if found is not None:
            index = found + 1
    lines.insert(index, line)
    return "\n".join(lines) + "\n"


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    removing = params["state"] == "absent"

    def describe(old: str) -> str:
        if removing:
            return "line removed"
        return "line replaced" if params.get("regexp") and _replaced(params, old) else "line added"

    return textfile.apply_edit(
        params,
        state,
        ctx,
        edit,
        removing=removing,
        nothing_to_remove="nothing to remove",
        unchanged=f"line already {params['state']}",
        describe=describe,
    )


def _replaced(params: Dict[str, Any], text: str) -> bool:
    regexp = re.compile(params["regexp"])
    return any(regexp.search(ln) for ln in text.splitlines())
