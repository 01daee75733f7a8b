"""Set the system time zone (Ansible's ``community.general.timezone``).

With a working timedatectl (systemd with its bus) the zone is set through it; otherwise
(a container without D-Bus) /etc/localtime becomes a link into /usr/share/zoneinfo and
/etc/timezone names the zone, as Debian's tzdata keeps them. Both are read first, so a
second run changes nothing.

Example::

    - timezone: {name: Europe/Paris}
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from ..api import Context, ModuleError, Result, atomic_write

ZONEINFO = "/usr/share/zoneinfo"
LOCALTIME = "/etc/localtime"
TIMEZONE_FILE = "/etc/timezone"

SCHEMA = {
    "description": "Set the system time zone (timedatectl when systemd runs, else /etc/localtime and /etc/timezone).",
    "args": {
        "name": {"type": "str", "description": "The zone, e.g. Etc/UTC or Europe/Paris (under /usr/share/zoneinfo)."},
        "hwclock": {
            "type": "str",
            "choices": ["local", "UTC"],
            "description": "Whether the hardware clock keeps local time or UTC (timedatectl set-local-rtc).",
        },
    },
    "required_one_of": [["name", "hwclock"]],
    "check_mode": "full",
    "diff": True,
    "example": "- timezone: {name: Europe/Paris}",
}


def _linked_zone() -> Optional[str]:
    """The zone /etc/localtime links to (None when it is not a link into zoneinfo)."""
    try:
        target = os.path.realpath(LOCALTIME)
    except OSError:
        return None
    root = os.path.realpath(ZONEINFO) + "/"
    return target[len(root) :] if target.startswith(root) else None


def _timezone_file() -> Optional[str]:
    try:
        with open(TIMEZONE_FILE) as handle:
            return handle.read().strip() or None
    except FileNotFoundError:
        return None


def _timedatectl(ctx: Context) -> Optional[Dict[str, str]]:
    """timedatectl's properties, or None when it cannot reach systemd (no bus in a container)."""
    if not os.path.exists("/usr/bin/timedatectl") or not os.path.isdir("/run/systemd/system"):
        return None
    done = ctx.run(["timedatectl", "show"], check=False)
    if done.rc != 0:
        return None
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    return {"linked": _linked_zone(), "file": _timezone_file(), "systemd": _timedatectl(ctx)}


def _current(state: Dict[str, Any]) -> Dict[str, Any]:
    systemd = state["systemd"]
    zone = (systemd or {}).get("Timezone") or state["linked"]
    local_rtc = (systemd or {}).get("LocalRTC") == "yes"
    return {"name": zone, "hwclock": "local" if local_rtc else "UTC"}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    name, hwclock = params.get("name"), params.get("hwclock")
    if name and not os.path.isfile(os.path.join(ZONEINFO, name)):
        raise ModuleError(f"no time zone {name}: {ZONEINFO}/{name} is missing (is tzdata installed?)")
    if hwclock and state["systemd"] is None:
        raise ModuleError("hwclock needs timedatectl with a running systemd (none reachable here)")
    before = _current(state)
    zone_wrong = bool(name) and (before["name"] != name or state["linked"] != name)
    file_wrong = bool(name) and state["file"] not in (None, name)
    rtc_wrong = bool(hwclock) and before["hwclock"] != hwclock
    if not (zone_wrong or file_wrong or rtc_wrong):
        return Result(False, f"time zone is {before['name']}", data={"timezone": before["name"]})
    after = dict(before, **({"name": name} if name else {}), **({"hwclock": hwclock} if hwclock else {}))
    diff = {"before": before, "after": after}
    msg = f"time zone {before['name']} -> {after['name']}" + (f", hwclock {hwclock}" if rtc_wrong else "")
    if ctx.check_mode:
        return Result(True, msg + " (check mode)", diff=diff)
    if zone_wrong or file_wrong:
        _set_zone(name, state, ctx)
    if rtc_wrong:
        ctx.run(["timedatectl", "set-local-rtc", "1" if hwclock == "local" else "0"])
    return Result(True, msg, diff=diff, data={"timezone": after["name"]})


def _set_zone(name: str, state: Dict[str, Any], ctx: Context) -> None:
    if state["systemd"] is not None:
        ctx.run(["timedatectl", "set-timezone", name])
    if _linked_zone() != name:
        temporary = LOCALTIME + ".kiln"
        if os.path.lexists(temporary):
            os.unlink(temporary)
        os.symlink(os.path.join(ZONEINFO, name), temporary)
        os.replace(temporary, LOCALTIME)
    if _timezone_file() != name and (state["file"] is not None or state["systemd"] is None):
        atomic_write(TIMEZONE_FILE, (name + "\n").encode(), mode=0o644)
