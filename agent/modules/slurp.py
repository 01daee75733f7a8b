"""Ansible's ``slurp``: a file of the box, base64-encoded, for ``register`` (``content | b64decode``).

Example::

    - slurp: {src: /etc/hostname}
      register: name_file
"""

from __future__ import annotations

import base64
import errno
from typing import Any, Dict

from ..api import Context, ModuleError, Result

SCHEMA = {
    "description": "Ansible's slurp: read a file of the box, base64-encoded into the registered content.",
    "args": {"src": {"type": "path", "required": True, "aliases": ["path"], "description": "The file to read."}},
    "check_mode": "full",
    "diff": False,
    "example": "- slurp: {src: /etc/hostname}",
}
WHY = {
    errno.ENOENT: "File not found: {}",
    errno.EACCES: "File is not readable: {}",
    errno.EISDIR: "Source is a directory and must be a file: {}",
}


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    source = params["src"]
    try:
        with open(source, "rb") as handle:
            return {"content": base64.b64encode(handle.read()).decode("ascii")}
    except OSError as exc:
        raise ModuleError(WHY.get(exc.errno or 0, "Unable to slurp file: {}").format(source), changed=False) from None


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    data = {"content": state["content"], "source": params["src"], "encoding": "base64"}
    return Result(False, f"read {params['src']}", data=data)
