"""Ansible's ``hostname``: set the machine's name, the way ansible-core's strategies do.

The strategy is ``use``, or as Ansible picks it: ``systemd`` (hostnamectl, static then transient
name) on a box that runs systemd, else the distribution's file (``/etc/hostname`` on Debian).
The file strategies write only their file, as Ansible's do: ``sles`` (/etc/HOSTNAME),
``redhat`` (HOSTNAME= in /etc/sysconfig/network), ``openrc`` (/etc/conf.d/hostname), ``alpine``
(/etc/hostname, then ``hostname -F``). Where a strategy cannot work (hostnamectl without D-Bus, as
in a minimal container; ``hostname`` without CAP_SYS_ADMIN) the step fails with the command's
words, as ansible-core's does on the same box. ``ansible_hostname``/``ansible_nodename`` follow.

Example::

    - hostname: {name: web01}
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any, Dict, List, Optional

from ..api import Context, ModuleError, Result

OTHER_OS = ("freebsd", "macos", "macosx", "darwin", "openbsd", "solaris")
FILES = {"file": "/etc/hostname", "alpine": "/etc/hostname", "sles": "/etc/HOSTNAME"}
REDHAT_FILE = "/etc/sysconfig/network"
OPENRC_FILE = "/etc/conf.d/hostname"

SCHEMA = {
    "description": "Ansible's hostname: set the machine's name (hostnamectl on systemd, else the distribution's file).",
    "args": {
        "name": {"type": "str", "required": True, "description": "The host name."},
        "use": {
            "type": "str",
            "choices": [
                "alpine",
                "debian",
                "freebsd",
                "generic",
                "macos",
                "macosx",
                "darwin",
                "openbsd",
                "openrc",
                "redhat",
                "sles",
                "solaris",
                "systemd",
            ],  # fmt: skip
            "description": "The strategy (Ansible's): unset, systemd on a systemd box, else the distribution's "
            "file; debian is systemd, as in Ansible.",
        },
    },
    "check_mode": "full",
    "diff": True,
    "example": "- hostname: {name: web01}",
}


def strategy(params: Dict[str, Any], ctx: Context) -> str:
    use = params.get("use")
    if use in OTHER_OS:
        raise ModuleError(f"hostname: use={use} is another operating system's strategy")
    if use == "generic":
        raise ModuleError("hostname: use=generic has no way to read or set a name (in Ansible either)")
    if use in ("systemd", "debian"):
        return "systemd"
    if use:
        return use
    if os.path.isdir("/run/systemd/system"):
        return "systemd"
    family = ctx.facts.get("os_family", "")
    if family == "RedHat":
        return "redhat"
    if family == "Alpine":
        return "alpine"
    if family in ("Debian", "Archlinux", "Void"):
        return "file"
    raise ModuleError(f"hostname module cannot be used on platform Linux ({ctx.facts.get('distribution', family)})")


# --- reading --------------------------------------------------------------------------------------
def _run(ctx: Context, argv: List[str]) -> str:
    done = ctx.run(argv, check=False)
    if done.rc != 0:
        raise ModuleError(f"Command failed rc={done.rc}, out={done.stdout}, err={done.stderr}")
    return done.stdout.strip()


def _hostnamectl(ctx: Context) -> str:
    found = shutil.which("hostnamectl")
    if not found:
        raise ModuleError('Failed to find required executable "hostnamectl"')
    return found


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def permanent(kind: str, ctx: Context) -> Optional[str]:
    if kind == "systemd":
        return _run(ctx, [_hostnamectl(ctx), "--static", "status"])
    if kind in FILES:
        return (_read(FILES[kind]) or "").strip()
    if kind == "redhat":
        for line in (_read(REDHAT_FILE) or "").splitlines():
            if line.strip().startswith("HOSTNAME"):
                return line.strip().split("=")[1].strip()
        raise ModuleError(f"Unable to locate HOSTNAME entry in {REDHAT_FILE}")
    text = _read(OPENRC_FILE)
    if text is None:
        return ""
    for line in text.splitlines():
        if line.strip().startswith("hostname="):
            return line.strip()[10:].strip('"')
    return None


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    kind = strategy(params, ctx)
    if kind == "systemd" and len(params["name"]) > 64:
        raise ModuleError("name cannot be longer than 64 characters on systemd servers, try a shorter name")
    static = permanent(kind, ctx)
    current = _run(ctx, [_hostnamectl(ctx), "--transient", "status"]) if kind == "systemd" else static
    return {"strategy": kind, "current": current, "permanent": static}


# --- changing -------------------------------------------------------------------------------------
def _write(path: str, text: str) -> None:
    """In place, as Ansible writes it (a container's /etc/hostname is a bind mount: no rename onto it)."""
    with open(path, "w+") as handle:
        handle.write(text)


def set_permanent(kind: str, name: str, ctx: Context) -> None:
    if kind == "systemd":
        _run(ctx, [_hostnamectl(ctx), "--pretty", "--static", "set-hostname", name])
    elif kind in FILES:
        _write(FILES[kind], f"{name}\n")
    elif kind == "redhat":
        lines = (_read(REDHAT_FILE) or "").splitlines(True)
        found = any(line.strip().startswith("HOSTNAME") for line in lines)
        lines = [f"HOSTNAME={name}\n" if line.strip().startswith("HOSTNAME") else line for line in lines]
        _write(REDHAT_FILE, "".join(lines + ([] if found else [f"HOSTNAME={name}\n"])))
    else:
        lines = [line.strip() for line in (_read(OPENRC_FILE) or "").splitlines()]
        for index, line in enumerate(lines):
            if line.startswith("hostname="):
                lines[index] = f'hostname="{name}"'
                break
        _write(OPENRC_FILE, "\n".join(lines) + "\n")


def set_current(kind: str, name: str, ctx: Context) -> None:
    if kind == "systemd":
        _run(ctx, [_hostnamectl(ctx), "--transient", "set-hostname", name])
    elif kind == "alpine":
        _run(ctx, ["hostname", "-F", FILES["alpine"]])


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    name, kind = params["name"], state["strategy"]
    steps = []
    if state["current"] != name:
        steps.append(set_current)
    if state["permanent"] != name:
        steps.append(set_permanent)
    if kind == "systemd":  # the static name first: NetworkManager objects to a transient one set apart
        steps.reverse()
    before = state["current"] if state["current"] != name else state["permanent"]
    data = {"name": name, "ansible_facts": _facts(name)}
    if not steps:
        return Result(False, f"hostname is {name}", data=data)
    diff = {"before": f"hostname = {before}\n", "after": f"hostname = {name}\n"}
    if not ctx.check_mode:
        for step in steps:
            step(kind, name, ctx)
    return Result(True, f"hostname {before} -> {name} ({kind})", diff=diff, data=data)


def _facts(name: str) -> Dict[str, str]:
    fqdn = socket.getfqdn()
    return {
        "ansible_hostname": name.split(".")[0],
        "ansible_nodename": name,
        "ansible_fqdn": fqdn,
        "ansible_domain": ".".join(fqdn.split(".")[1:]),
    }
