"""Ansible's ``tempfile``: a new temporary file or folder, its path registered, as ansible-core makes it.

``mkstemp``/``mkdtemp`` in ``path`` (the system's temporary folder, /tmp, by default) with
``prefix`` (``ansible.``) and ``suffix``; each run makes a new one and reports changed, as
ansible-core does (remove it with ``file: state=absent`` when done). Like ansible-core's, it does
nothing in check mode.

Example::

    - tempfile: {state: directory, suffix: build}
      register: build_dir
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Dict

from ..api import Context, ModuleError, Result

SCHEMA = {
    "description": "Ansible's tempfile: make a temporary file or folder and register its path.",
    "args": {
        "state": {"type": "str", "choices": ["file", "directory"], "default": "file", "description": "What to make."},
        "path": {"type": "path", "description": "The folder to make it in (default: the system's, /tmp)."},
        "prefix": {"type": "str", "default": "ansible.", "description": "The name's start."},
        "suffix": {"type": "str", "default": "", "description": "The name's end."},
    },
    "check_mode": "none",
    "diff": False,
    "example": "- tempfile: {state: directory, suffix: build}",
}


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    for part in ("prefix", "suffix"):
        value = params[part]
        if value and value != os.path.basename(value):
            raise ModuleError(f"{part} must be a valid file name component, got {value!r}")
    return {}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    if ctx.check_mode:
        return Result(False, "tempfile makes nothing in check mode (as ansible-core's)", predicted=False)
    folder, prefix, suffix = params.get("path"), params["prefix"], params["suffix"]
    try:
        if params["state"] == "file":
            handle, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
            os.close(handle)
        else:
            path = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=folder)
    except OSError as exc:
        raise ModuleError(str(exc)) from None
    return Result(True, f"made {path}", data={"path": path})
