"""Manage one named job in a user's crontab (read with ``crontab -l``, written with ``crontab -``).

The job is the line after a ``#kiln: <name>`` marker line; other lines are left alone.

Example::

    - cron: {name: rotate-logs, minute: "0", hour: "3", job: "/usr/local/bin/rotate"}
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..api import Context, ModuleError, Result, require_command, unified_diff

SCHEMA = {
    "description": "Add, change or remove a named job in a user's crontab.",
    "args": {
        "name": {
            "type": "str",
            "required": True,
            "description": "The job's name, kept in a '#kiln: <name>' marker line; unique per crontab.",
        },
        "job": {"type": "str", "description": "The command line (state=present)."},
        "minute": {"type": "str", "default": "*", "description": "Minute field."},
        "hour": {"type": "str", "default": "*", "description": "Hour field."},
        "day": {"type": "str", "default": "*", "description": "Day of month field."},
        "month": {"type": "str", "default": "*", "description": "Month field."},
        "weekday": {"type": "str", "default": "*", "description": "Day of week field."},
        "special_time": {
            "type": "str",
            "choices": ["reboot", "yearly", "annually", "monthly", "weekly", "daily", "hourly"],
            "description": "@reboot, @daily, ... instead of the five time fields.",
        },
        "user": {"type": "str", "default": "root", "description": "Whose crontab."},
        "state": {
            "type": "str",
            "choices": ["present", "absent"],
            "default": "present",
            "description": "present: the job is there as given; absent: it is removed.",
        },
    },
    "required_if": [["state", "present", ["job"]]],
    "check_mode": "full",
    "diff": True,
    "example": '- cron: {name: rotate-logs, minute: "0", hour: "3", job: /usr/local/bin/rotate}',
}

MARK = "#kiln: "


def _crontab(ctx: Context) -> str:
    return require_command("crontab", "install the cron package first")


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    crontab = _crontab(ctx)
    done = ctx.run([crontab, "-l", "-u", params["user"]], check=False)
    if done.rc != 0:
        if "no crontab" in (done.stderr + done.stdout).lower():
            return {"text": ""}
        raise ModuleError(f"crontab -l -u {params['user']} failed: {done.stderr.strip()}")
    return {"text": done.stdout}


def job_line(params: Dict[str, Any]) -> str:
    if params.get("special_time"):
        when = "@" + params["special_time"]
    else:
        when = " ".join(str(params[k]) for k in ("minute", "hour", "day", "month", "weekday"))
    return f"{when} {params['job']}"


def _new_text(params: Dict[str, Any], text: str) -> str:
    lines: List[str] = text.splitlines()
    marker = MARK + params["name"]
    index: Optional[int] = next((i for i, ln in enumerate(lines) if ln.strip() == marker), None)
    if params["state"] == "absent":
        if index is None:
            return text
        del lines[index : index + 2]
    else:
        wanted = [marker, job_line(params)]
        if index is None:
            lines += wanted
        elif lines[index : index + 2] == wanted:
            return text
        else:
            lines[index : index + 2] = wanted
    return "\n".join(lines) + ("\n" if lines else "")


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    if "\n" in (params.get("job") or "") or "\n" in params["name"]:
        raise ModuleError("name and job must be single lines")
    old = state["text"]
    new = _new_text(params, old)
    user, name = params["user"], params["name"]
    if new == old:
        return Result(False, f"cron job {name} already {params['state']} for {user}")
    diff = {"unified": unified_diff(old, new, f"crontab of {user}")}
    msg = f"cron job {name} {'removed' if params['state'] == 'absent' else 'written'} for {user}"
    if ctx.check_mode:
        return Result(True, f"{msg} (check mode)", diff=diff)
    ctx.run([_crontab(ctx), "-u", user, "-"], input=new)
    return Result(True, msg, diff=diff)
