"""Check conditions on the box (Ansible's ``assert``): fails with ``fail_msg`` when one is false.

Example::

    - assert: {that: ["nginx_port | int > 0"], fail_msg: "nginx_port must be a port"}
"""

from __future__ import annotations

from typing import Any, Dict

from ..api import Context, ModuleError, Result

SCHEMA = {
    "description": "Fail unless every expression in `that` is true.",
    "args": {
        "that": {
            "type": "list",
            "elements": "str",
            "required": True,
            "description": "Expressions (like when), all must be true.",
        },
        "fail_msg": {"type": "str", "aliases": ["msg"], "description": "The failure's message."},
        "success_msg": {"type": "str", "default": "All assertions passed", "description": "The message when all hold."},
        "quiet": {"type": "bool", "default": False, "description": "Accepted for Ansible."},
    },
    "check_mode": "full",
    "diff": False,
    "example": '- assert: {that: ["nginx_port | int > 0"]}',
}


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    from ..templating import TemplateError, evaluate

    for condition in params["that"]:
        try:
            if not evaluate(condition, ctx.variables):
                return {"false": condition}
        except TemplateError as exc:
            raise ModuleError(f"assert: {condition}: {exc}") from None
    return {"false": None}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    if state["false"] is not None:
        raise ModuleError(
            params.get("fail_msg") or f"Assertion failed: {state['false']}",
            assertion=state["false"],
            evaluated_to=False,
        )
    return Result(False, params["success_msg"])
