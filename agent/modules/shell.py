"""Run a command line through ``/bin/bash`` (pipes, redirections, globbing), or through ``executable``.

Example::

    - shell: {cmd: "curl -fsS http://127.0.0.1/ | grep kiln", creates: /etc/kiln/checked}
"""

from __future__ import annotations

from typing import Any, Dict

from ..api import Context, Result
from ..modules import command

SCHEMA = dict(
    command.SCHEMA,
    description="Run a command line through /bin/bash; skipped when `creates` exists or `removes` does not.",
    args={
        **{k: v for k, v in command.SCHEMA["args"].items() if k != "argv"},
        "executable": {"type": "path", "description": "Another shell to run the line (its -c), as Ansible's shell."},
    },
    mutually_exclusive=[],
    required_one_of=[["cmd"]],
    example='- shell: {cmd: "echo ok > /etc/kiln-ok", creates: /etc/kiln-ok}',
)

check = command.check


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    if params.get("executable"):  # Ansible runs [executable, "-c", cmd]
        argv = [params["executable"], "-c", params["cmd"]]
        return command.run_command({**params, "argv": argv}, state, ctx, shell=False)
    return command.run_command(params, state, ctx, shell=True)
