"""Show a message or a variable's value in the step's report (Ansible's ``debug``); changes nothing.

Example::

    - debug: {var: result.stdout_lines}
"""

from __future__ import annotations

from typing import Any, Dict

from ..api import Context, Result

SCHEMA = {
    "description": "Show a message or a variable in the run's report; changes nothing.",
    "free_form": "msg",
    "args": {
        "msg": {"type": "raw", "description": "What to show (rendered on the box)."},
        "var": {"type": "str", "description": "A variable name or expression whose value to show."},
        "verbosity": {"type": "int", "default": 0, "description": "Accepted for Ansible; always shown."},
    },
    "mutually_exclusive": [["msg", "var"]],
    "check_mode": "full",
    "diff": False,
    "example": "- debug: {var: result.stdout_lines}",
}


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    return {}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    if params.get("var"):
        from ..templating import TemplateError, evaluate

        try:
            value: Any = evaluate(params["var"], ctx.variables)
        except TemplateError:
            value = "VARIABLE IS NOT DEFINED!"
        return Result(False, f"{params['var']}: {value!r}", data={params["var"]: value})
    message = params.get("msg", "Hello world!")
    return Result(False, str(message), data={"msg": message})
