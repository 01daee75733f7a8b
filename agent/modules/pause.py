"""Ansible's ``pause``: wait ``seconds`` or ``minutes`` (bounded by the step's time limit).

A bake has no one at a terminal: a ``prompt`` is not answered, and without a duration the step goes
on at once, as ansible-playbook does when its input is not interactive. The registered result is
Ansible's: stdout ``Paused for N seconds|minutes``, start, stop, delta, user_input (empty), echo.

Example::

    - pause: {seconds: 5}
"""

from __future__ import annotations

import datetime
import time
from typing import Any, Dict

from ..api import Context, Result

SCHEMA = {
    "description": "Ansible's pause: wait seconds or minutes; a prompt is not answered (no terminal in a bake).",
    "args": {
        "seconds": {"type": "int", "description": "Seconds to wait (at least 1)."},
        "minutes": {"type": "int", "description": "Minutes to wait."},
        "prompt": {"type": "str", "description": "Shown by Ansible at a terminal; a bake has none: not answered."},
        "echo": {"type": "bool", "default": True, "description": "Whether typed input is shown (no effect in a bake)."},
    },
    "mutually_exclusive": [["minutes", "seconds"]],
    "check_mode": "full",
    "diff": False,
    "example": "- pause: {seconds: 5}",
}


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    return {}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    unit = "seconds" if params.get("seconds") is not None else "minutes"
    wanted = (
        params["seconds"]
        if unit == "seconds"
        else (params["minutes"] * 60 if params.get("minutes") is not None else None)
    )
    started, began = time.time(), str(datetime.datetime.now())
    if wanted is not None:
        left = ctx.clock.left() if ctx.clock is not None else float(max(wanted, 1))
        time.sleep(max(0.0, min(float(max(wanted, 1)), left)))
    took = time.time() - started
    shown = round(took / 60.0, 2) if unit == "minutes" else round(took, 2)
    data = {
        "rc": 0,
        "stdout": f"Paused for {shown} {unit}",
        "stderr": "",
        "start": began,
        "stop": str(datetime.datetime.now()),
        "delta": int(took),
        "user_input": "",
        "echo": params["echo"],
    }
    return Result(False, data["stdout"], data=data)
