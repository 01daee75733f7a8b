"""Check a command's exit status and, optionally, substrings of its output.

Runs through ``/bin/bash``; the command must not change the box.

Example::

    - command: "nginx -t"
    - command: {cmd: "id deploy", stdout: ["sudo"]}
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from ..api import Context, ModuleError, as_list, tail

SCHEMA = {
    "description": "A (read-only) command exits with the wanted status and prints the given strings.",
    "free_form": "cmd",
    "args": {
        "cmd": {"type": "str", "required": True, "description": "Command line, run with /bin/bash."},
        "exit_status": {"type": "int", "default": 0, "description": "Expected exit status."},
        "stdout": {"type": "list", "elements": "str", "description": "Substrings stdout must contain."},
        "stderr": {"type": "list", "elements": "str", "description": "Substrings stderr must contain."},
        "timeout": {"type": "int", "default": 60, "description": "Seconds before the command is killed."},
    },
    "example": '- command: "nginx -t"\n- command: {cmd: "id deploy", stdout: [sudo]}',
}


def probe(params: Dict[str, Any], ctx: Context) -> Tuple[bool, str]:
    try:
        done = ctx.run(params["cmd"], shell=True, check=False, timeout=params["timeout"])
    except ModuleError as exc:
        return False, exc.msg
    problems = []
    if done.rc != params["exit_status"]:
        shown = tail(done.stderr or done.stdout, 3)
        problems.append(f"exit {done.rc} (wanted {params['exit_status']})" + (f": {shown}" if shown else ""))
    for stream, text in (("stdout", done.stdout), ("stderr", done.stderr)):
        missing = [s for s in as_list(params.get(stream)) if s not in text]
        if missing:
            problems.append(f"{stream} did not contain " + ", ".join(repr(s) for s in missing))
    if problems:
        return False, "; ".join(problems)
    return True, f"exit {done.rc}"
