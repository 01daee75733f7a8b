"""Set a kernel parameter: persistently in a sysctl.d file, and live through /proc/sys.

The live value is read from /proc/sys first; the file is rewritten only when its
entry differs, the live value only when it differs (and ``reload`` is on).

Example::

    - sysctl: {name: net.ipv4.ip_forward, value: "1"}
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional

from ..api import Context, ModuleError, Result, atomic_write, unified_diff

SCHEMA = {
    "description": "Set a kernel parameter (sysctl) in a sysctl.d file and, with reload, live.",
    "args": {
        "name": {
            "type": "str",
            "required": True,
            "aliases": ["key"],
            "description": "Parameter name, e.g. net.ipv4.ip_forward.",
        },
        "value": {"type": "str", "aliases": ["val"], "description": "The value (state=present)."},
        "state": {
            "type": "str",
            "choices": ["present", "absent"],
            "default": "present",
            "description": "present: set in the file (and live); absent: removed from the file (the live "
            "value is left as is).",
        },
        "sysctl_file": {
            "type": "path",
            "default": "/etc/sysctl.d/99-kiln.conf",
            "description": "The file holding the setting, rewritten as ansible.posix's sysctl writes it (key=value "
            "lines, each key once) when the value there differs.",
        },
        "reload": {
            "type": "bool",
            "default": True,
            "description": "Also set the live value (write /proc/sys) when it differs.",
        },
        "sysctl_set": {
            "type": "bool",
            "default": False,
            "description": "Set the live value when it differs even with reload: false (ansible.posix's sysctl -w).",
        },
        "ignoreerrors": {
            "type": "bool",
            "default": False,
            "description": "Do not fail when the live value cannot be set (e.g. in a container).",
        },
    },
    "required_if": [["state", "present", ["value"]]],
    "check_mode": "full",
    "diff": True,
    "example": '- sysctl: {name: net.ipv4.ip_forward, value: "1"}',
}


def proc_path(name: str) -> str:
    return "/proc/sys/" + name.replace(".", "/")


def normalise(value: Any) -> str:
    return " ".join(str(value).split())


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    live: Optional[str] = None
    try:
        with open(proc_path(params["name"])) as handle:
            live = normalise(handle.read())
    except FileNotFoundError:
        live = None
    except OSError as exc:
        raise ModuleError(f"cannot read {proc_path(params['name'])}: {exc}") from None
    text = None
    if os.path.exists(params["sysctl_file"]):
        with open(params["sysctl_file"]) as handle:
            text = handle.read()
    return {"live": live, "text": text}


BOOL_TRUE = ("y", "yes", "on", "1", "true", "t")
BOOL_FALSE = ("n", "no", "off", "0", "false", "f")


def file_value(value: Any) -> str:
    """The value as ansible.posix's sysctl writes it: a boolean word is 1 or 0, anything else stripped."""
    text = str(value).strip()
    if text.lower() in BOOL_TRUE or value is True:
        return "1"
    if text.lower() in BOOL_FALSE or value is False:
        return "0"
    return text


def _file_lines(text: str) -> List[str]:
    return [line.strip() for line in text.splitlines()]


def _settings(lines: List[str]) -> Dict[str, str]:
    """Each parameter's value in the file (the last line that sets it wins, as ansible.posix reads it)."""
    values: Dict[str, str] = {}
    for line in lines:
        if line and not line.startswith(("#", ";")) and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def _new_text(params: Dict[str, Any], text: str) -> str:
    """The file as ansible.posix's sysctl rewrites it when it writes: every setting as ``key=value`` once (its first
    line), the parameter's own set (or dropped), appended when missing; comments and blanks kept."""
    name = params["name"]
    present = params["state"] == "present"
    seen: List[str] = []
    fixed: List[str] = []
    for line in _file_lines(text):
        if not line or line.startswith(("#", ";")) or "=" not in line:
            fixed.append(line)
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if key in seen:
            continue
        seen.append(key)
        if key != name:
            fixed.append(f"{key}={value}")
        elif present:
            fixed.append(f"{key}={file_value(params['value'])}")
    if name not in seen and present:
        fixed.append(f"{name}={file_value(params['value'])}")
    return "".join(line + "\n" for line in fixed)


def file_needs_writing(params: Dict[str, Any], text: str) -> bool:
    """ansible.posix's decision: the parameter missing (present), there (absent), or with another value."""
    current = _settings(_file_lines(text)).get(params["name"])
    if params["state"] == "absent":
        return bool(current)
    return current != file_value(params["value"])


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    name, path = params["name"], params["sysctl_file"]
    if not re.match(r"^[A-Za-z0-9_.\-/*]+$", name):
        raise ModuleError(f"'{name}' is not a kernel parameter name")
    old = state["text"] or ""
    file_changes = file_needs_writing(params, old)
    new = _new_text(params, old) if file_changes else old
    live = state["live"]
    live_wanted = params["reload"] or params["sysctl_set"]
    set_live = params["state"] == "present" and live_wanted and live != normalise(file_value(params["value"]))
    if params["state"] == "present" and live is None and params["reload"] and not params["ignoreerrors"]:
        raise ModuleError(f"no such kernel parameter: {name} ({proc_path(name)} missing)")
    if live is None:  # sysctl_set alone skips a parameter the kernel lacks, as ansible.posix's does
        set_live = False
    if not file_changes and not set_live:
        return Result(
            False, f"{name} is {'absent from ' + path if params['state'] == 'absent' else 'set'}", data={"live": live}
        )
    diff: Dict[str, Any] = {}
    msgs = []
    if file_changes:
        diff["unified"] = unified_diff(old, new, path)
        msgs.append(f"{path} updated")
    if set_live:
        diff["before"] = {"live": live}
        diff["after"] = {"live": normalise(file_value(params["value"]))}
        msgs.append(f"live {live} -> {normalise(file_value(params['value']))}")
    msg = f"{name}: " + ", ".join(msgs)
    if ctx.check_mode:
        return Result(True, f"{msg} (check mode)", diff=diff)
    if file_changes:
        directory = os.path.dirname(path)
        if directory and not os.path.isdir(directory):
            os.makedirs(directory, mode=0o755)
        atomic_write(path, new.encode(), ctx=ctx)
    if set_live:
        try:
            with open(proc_path(name), "w") as handle:
                handle.write(file_value(params["value"]))
        except OSError as exc:
            if not params["ignoreerrors"]:
                raise ModuleError(
                    f"cannot set {name} live ({exc.strerror}); the setting is saved in {path} "
                    "(in containers set ignoreerrors: true, or reload: false without sysctl_set)"
                ) from None
            diff.pop("before", None)
            diff.pop("after", None)
            note = f"live value not set: {exc.strerror}"
            if not file_changes:
                return Result(False, f"{name}: {path} is up to date ({note})", data={"live": live})
            return Result(True, f"{name}: {path} updated ({note})", diff=diff, data={"live": live})
    return Result(True, msg, diff=diff, data={"live": normalise(file_value(params["value"])) if set_live else live})
