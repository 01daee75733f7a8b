"""Set variables for the rest of the run (Ansible's ``set_fact``), from values rendered on the box.

Example::

    - set_fact: {facts: {ntp_package: "{{ __ntp_package }}"}}
"""

from __future__ import annotations

from typing import Any, Dict

from ..api import Context, Result

SCHEMA = {
    "description": "Set variables for later steps, templates and verify.yml (Ansible's set_fact).",
    "args": {
        "facts": {"type": "dict", "required": True, "description": "Names and their values (rendered on the box)."},
        "cacheable": {"type": "bool", "default": False, "description": "Accepted for Ansible; nothing is cached."},
    },
    "check_mode": "full",
    "diff": False,
    "example": '- set_fact: {facts: {nginx_user: "{{ __nginx_user }}"}}',
}


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    return {}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    """Nothing on the box changes: the runner takes ``ansible_facts`` into the run's variables."""
    return Result(False, "set " + ", ".join(params["facts"]), data={"ansible_facts": dict(params["facts"])})
