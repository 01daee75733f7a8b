"""community.general's ``make``: a make target run in a directory, only when ``make -q`` says it is not up to date.

As the collection's module does it: ``gmake`` when the box has it, else ``make`` (``make``: another program);
``jobs`` as ``-j``, ``file`` as ``-f``, the target(s), then ``params`` as ``NAME=value`` words (a None value:
the bare name). ``make -q`` first: exit 0 is ok (nothing run), anything else runs make itself and is changed.
Check mode runs only ``make -q``.

Example::

    - make: {chdir: /usr/local/src/app, target: install, params: {PREFIX: /usr/local}}
"""

from __future__ import annotations

import shlex
import shutil
from typing import Any, Dict, List

from ..api import Context, ModuleError, Result

SCHEMA = {
    "description": "community.general's make: run a make target in a directory unless make -q says it is up to date.",
    "args": {
        "chdir": {"type": "path", "required": True, "description": "The directory make runs in."},
        "target": {"type": "str", "description": "The target (none: make's default)."},
        "targets": {"type": "list", "elements": "str", "description": "Several targets, in order."},
        "params": {"type": "dict", "description": "Variables given as NAME=value words (null: the bare name)."},
        "file": {"type": "path", "description": "The makefile (-f)."},
        "jobs": {"type": "int", "description": "Jobs at once (-j)."},
        "make": {"type": "path", "description": "The make program (default: gmake if present, else make)."},
    },
    "mutually_exclusive": [["target", "targets"]],
    "check_mode": "full",
    "diff": False,
    "example": "- make: {chdir: /usr/local/src/app, target: install, params: {PREFIX: /usr/local}}",
}


def command(params: Dict[str, Any]) -> List[str]:
    """make's words, in the collection module's order."""
    program = params.get("make") or shutil.which("gmake") or shutil.which("make")
    if not program:
        raise ModuleError('Failed to find required executable "make" in paths', changed=False)
    argv = [program]
    if params.get("jobs") is not None:
        argv += ["-j", str(params["jobs"])]
    if params.get("file") is not None:
        argv += ["-f", params["file"]]
    if params.get("target"):
        argv.append(params["target"])
    elif params.get("targets"):
        argv += params["targets"]
    for name, value in (params.get("params") or {}).items():
        argv.append(name + (f"={value}" if value is not None else ""))
    return argv


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    """Whether ``make -q`` says the target is up to date (exit 0)."""
    argv = command(params)
    done = ctx.run(argv + ["-q"], check=False, cwd=params["chdir"])
    return {"argv": argv, "up_to_date": done.rc == 0, "stdout": done.stdout, "stderr": done.stderr}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    argv = state["argv"]
    shown = " ".join(shlex.quote(part) for part in argv)
    data = {
        "command": shown,
        "chdir": params["chdir"],
        "target": params.get("target"),
        "targets": params.get("targets"),
        "params": params.get("params"),
        "file": params.get("file"),
        "jobs": params.get("jobs"),
        "stdout": state["stdout"].rstrip("\r\n"),
        "stderr": state["stderr"].rstrip("\r\n"),
    }
    if state["up_to_date"]:
        return Result(False, f"{shown}: up to date", data=with_lines(data))
    if ctx.check_mode:
        return Result(True, f"{shown}: would run", data=with_lines(data))
    done = ctx.run(argv, cwd=params["chdir"])
    data.update(stdout=done.stdout.rstrip("\r\n"), stderr=done.stderr.rstrip("\r\n"))
    return Result(True, f"ran {shown}", data=with_lines(data))


def with_lines(data: Dict[str, Any]) -> Dict[str, Any]:
    """stdout_lines and stderr_lines beside them, as Ansible adds them to any result with stdout and stderr."""
    return {**data, "stdout_lines": data["stdout"].splitlines(), "stderr_lines": data["stderr"].splitlines()}
