"""Fail the step with a message (Ansible's ``fail``), usually under a ``when``.

Example::

    - fail: {msg: "unsupported OS"}
      when: ansible_os_family != "Debian"
"""

from __future__ import annotations

from typing import Any, Dict

from ..api import Context, ModuleError, Result

SCHEMA = {
    "description": "Fail with a message (use with when).",
    "free_form": "msg",
    "args": {"msg": {"type": "str", "default": "Failed as requested from task", "description": "Why."}},
    "check_mode": "full",
    "diff": False,
    "example": '- fail: {msg: "unsupported OS"}\n  when: ansible_os_family != "Debian"',
}


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    return {}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    raise ModuleError(params["msg"])
