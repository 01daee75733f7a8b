"""Check a kernel parameter's live value (read from /proc/sys).

Example::

    - kernel_param: {name: net.ipv4.ip_forward, value: "1"}
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from ..api import Context

SCHEMA = {
    "description": "A kernel parameter (sysctl) has the given live value.",
    "free_form": "name",
    "args": {
        "name": {"type": "str", "required": True, "description": "Parameter name, e.g. net.ipv4.ip_forward."},
        "value": {
            "type": "str",
            "required": True,
            "description": "Expected value (whitespace between fields is normalised).",
        },
    },
    "example": '- kernel_param: {name: net.ipv4.ip_forward, value: "1"}',
}


def proc_path(name: str) -> str:
    return "/proc/sys/" + name.replace(".", "/")


def read_param(name: str) -> str:
    with open(proc_path(name)) as handle:
        return " ".join(handle.read().split())


def probe(params: Dict[str, Any], ctx: Context) -> Tuple[bool, str]:
    name = params["name"]
    try:
        value = read_param(name)
    except FileNotFoundError:
        return False, f"{name}: no such kernel parameter ({proc_path(name)} missing)"
    wanted = " ".join(str(params["value"]).split())
    if value != wanted:
        return False, f"{name} = {value} (wanted {wanted})"
    return True, f"{name} = {value}"
