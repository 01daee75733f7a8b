"""Run a command (no shell). Guard it with ``creates``/``removes`` to make it idempotent.

Example::

    - command: {cmd: "/usr/sbin/nginx -t"}
      changed_when: false
"""

from __future__ import annotations

import os
import shlex
from typing import Any, Dict

from ..api import Context, ModuleError, Result

SCHEMA = {
    "description": "Run a command without a shell; skipped when `creates` exists or `removes` does not.",
    "free_form": "cmd",
    "args": {
        "cmd": {"type": "str", "description": "The command line (split like a shell would, no expansion)."},
        "argv": {"type": "list", "elements": "str", "description": "The command as a list, no splitting."},
        "creates": {"type": "path", "description": "Skip when this path exists."},
        "removes": {"type": "path", "description": "Skip when this path does not exist."},
        "chdir": {"type": "path", "description": "Run in this directory."},
        "stdin": {"type": "str", "description": "Text fed to the command's standard input."},
        "env": {"type": "dict", "description": "Extra environment variables."},
        "timeout": {"type": "int", "description": "Seconds before the command is killed."},
    },
    "mutually_exclusive": [["cmd", "argv"]],
    "required_one_of": [["cmd", "argv"]],
    "check_mode": "none",
    "diff": False,
    "example": "- command: {cmd: /usr/sbin/nginx -t}\n  changed_when: false",
}

SHELL = False


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    """Only the guards can be read: a command's effect is unknown until it runs."""
    return {
        "creates_exists": bool(params.get("creates")) and os.path.exists(params["creates"]),
        "removes_missing": bool(params.get("removes")) and not os.path.exists(params["removes"]),
    }


def run_command(params: Dict[str, Any], state: Dict[str, Any], ctx: Context, shell: bool) -> Result:
    if state["creates_exists"]:
        return Result(False, f"skipped: {params['creates']} exists", data={"rc": 0, "stdout": "", "stderr": ""})
    if state["removes_missing"]:
        return Result(False, f"skipped: {params['removes']} does not exist", data={"rc": 0, "stdout": "", "stderr": ""})
    if ctx.check_mode:
        return Result(True, "would run (check mode cannot predict a command)", predicted=False)
    if shell:
        argv: Any = params["cmd"]
    else:
        argv = params.get("argv") or shlex.split(params["cmd"])
    env = {str(k): str(v) for k, v in (params.get("env") or {}).items()}
    done = ctx.run(
        argv,
        check=False,
        input=params.get("stdin"),
        env=env,
        shell=shell,
        cwd=params.get("chdir"),
        timeout=params.get("timeout"),
    )
    stdout, stderr = done.stdout.rstrip("\r\n"), done.stderr.rstrip("\r\n")  # as Ansible registers them
    data = {
        "rc": done.rc,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_lines": stdout.splitlines(),
        "stderr_lines": stderr.splitlines(),
        "cmd": argv,
    }
    if done.rc != 0:
        raise ModuleError(f"exited {done.rc}", **data)
    return Result(True, f"ran (rc {done.rc})", data=data)


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    return run_command(params, state, ctx, shell=SHELL)
