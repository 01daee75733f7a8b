"""The box's services as Ansible's ``service_facts`` reports them; changes nothing.

``ansible_facts.services`` (and ``services``) maps each unit to ``{name, state, status,
source}``, read the way ansible-core reads them: ``service --status-all`` for SysV
scripts, then systemd's loaded units and unit files (systemd's entries win).

Example::

    - service_facts:
    - service: {name: systemd-timesyncd, state: stopped}
      when: "'systemd-timesyncd.service' in services"
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any, Dict

from ..api import Context, Result

SCHEMA = {
    "description": "Gather the box's services into ansible_facts.services (Ansible's service_facts); changes nothing.",
    "args": {},
    "check_mode": "full",
    "diff": False,
    "example": "- service_facts:",
}

BAD_STATES = ("not-found", "masked", "failed")
SYSV_LINE = re.compile(r"^\s*\[ (?P<state>\+|\-) \]\s+(?P<name>.+)$", re.M)


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    services: Dict[str, Dict[str, Any]] = {}
    if shutil.which("service") and not shutil.which("chkconfig") and not shutil.which("rc-status"):
        services.update(_sysv(ctx))
    systemctl = shutil.which("systemctl")
    if systemctl and os.path.isdir("/run/systemd/system"):
        _units(ctx, systemctl, services)
        _unit_files(ctx, systemctl, services)
    return {"services": services}


def _sysv(ctx: Context) -> Dict[str, Dict[str, Any]]:
    done = ctx.run(["service", "--status-all"], check=False)
    found = {}
    for match in SYSV_LINE.finditer(done.stdout):
        name = match.group("name")
        state = "running" if match.group("state") == "+" else "stopped"
        found[name] = {"name": name, "state": state, "source": "sysv"}
    return found


def _units(ctx: Context, systemctl: str, services: Dict[str, Dict[str, Any]]) -> None:
    """Loaded units: running or stopped, their status the first bad state systemd shows, else active/inactive."""
    done = ctx.run([systemctl, "list-units", "--no-pager", "--type", "service", "--all", "--plain"], check=False)
    if done.rc != 0:
        return
    for line in (ln for ln in done.stdout.split("\n") if ".service" in ln):
        fields = line.split()
        status = next((bad for bad in BAD_STATES if bad in fields[:-1]), None) or fields[2]
        state = "running" if fields[3] == "running" else "stopped"
        services[fields[0]] = {"name": fields[0], "state": state, "status": status, "source": "systemd"}


def _unit_files(ctx: Context, systemctl: str, services: Dict[str, Dict[str, Any]]) -> None:
    """Unit files complete the picture: the enablement status, and units not loaded (their ActiveState)."""
    done = ctx.run([systemctl, "list-unit-files", "--no-pager", "--type", "service", "--all"], check=False)
    if done.rc != 0:
        return
    for line in (ln for ln in done.stdout.split("\n") if ".service" in ln):
        name, status = line.split()[:2]
        if name not in services:
            shown = ctx.run([systemctl, "show", name, "--property=ActiveState"], check=False)
            state = shown.stdout.replace("ActiveState=", "").rstrip() if shown.rc == 0 and shown.stdout else "unknown"
            services[name] = {"name": name, "state": state, "status": status, "source": "systemd"}
        elif services[name]["status"] not in BAD_STATES:
            services[name]["status"] = status


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    services = state["services"]
    if not services:
        return Result(
            False,
            "Failed to find any services. This can be due to privileges or some other configuration issue.",
            data={"skipped": True},
        )
    return Result(False, f"{len(services)} services", data={"ansible_facts": {"services": services}})
