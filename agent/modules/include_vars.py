"""Load variables from a file of the role (Ansible's ``include_vars``), at run time on the box.

The controller ships a role's ``vars/`` files in the bundle as ``vars/<role>/<name>``; a relative
``file`` is read there (never outside it), an absolute one is a path on the box. JSON or the YAML
subset of ``agent.ansible_jinja.from_yaml``.

Example::

    - include_vars: "{{ ansible_os_family }}.yml"
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict

from ..api import Context, ModuleError, Result

SCHEMA = {
    "description": "Load variables from a vars file of the role (Ansible's include_vars).",
    "free_form": "file",
    "args": {
        "file": {"type": "str", "required": True, "description": "The vars file: relative to the role's vars/."},
        "name": {"type": "str", "description": "Put the file's variables under this one name."},
    },
    "check_mode": "full",
    "diff": False,
    "example": '- include_vars: "{{ ansible_os_family }}.yml"',
}


def vars_path(name: str, ctx: Context) -> str:
    if os.path.isabs(name):
        return name
    role = ctx.variables.get("role_name", "")
    root = os.path.realpath(os.path.join(os.path.dirname(ctx.files_dir), "vars", role))
    path = os.path.realpath(os.path.join(root, name))
    if not role or os.path.commonpath([path, root]) != root:
        raise ModuleError(f"include_vars: {name} leads out of the role's vars/")
    return path


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    path = vars_path(params["file"], ctx)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ModuleError(f"include_vars: cannot read {params['file']}: {exc.strerror}") from None
    return {"path": path, "text": text}


def parse(text: str, name: str) -> Dict[str, Any]:
    from ..ansible_jinja import FilterError, from_yaml

    try:
        loaded = json.loads(text)
    except ValueError:
        try:
            loaded = from_yaml(text)
        except FilterError as exc:
            raise ModuleError(f"include_vars {name}: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ModuleError(f"include_vars {name}: the file must hold a mapping, not {type(loaded).__name__}")
    return loaded


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    loaded = parse(state["text"], params["file"])
    found = {params["name"]: loaded} if params.get("name") else loaded
    return Result(
        False,
        f"{len(loaded)} variables from {params['file']}",
        data={"ansible_facts": found, "ansible_included_var_files": [state["path"]]},
    )
