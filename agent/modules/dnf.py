"""Ansible's ``dnf`` (and ``yum`` and ``dnf5``, which Ansible runs as dnf): kiln's package module on dnf.

ansible-core's dnf action picks its backend from the box's package manager, and on a box whose
manager is neither dnf nor yum (Debian's apt) it fails, whatever the arguments: a RedHat-only task
fails on Debian only if its ``when`` lets it run. So does this module, in Ansible's words. On a dnf
box, name, state and update_cache are the package module's; dnf's other arguments (exclude,
enablerepo, ...) are accepted at validate and fail the step when it runs: kiln does not implement them.

Example::

    - dnf: {name: [nginx, curl], state: present, exclude: python-unversioned-command}
      when: ansible_os_family == 'RedHat'
"""

from __future__ import annotations

from typing import Any, Dict

from ..api import Context, ModuleError, Result
from . import package

BACKENDS = ("auto", "dnf", "yum", "yum4", "dnf4", "dnf5")
STATES = {"present": "present", "installed": "present", "latest": "latest", "absent": "absent", "removed": "absent"}

# ansible-core 2.19's dnf and dnf5 arguments (module_utils/yumdnf.py) that kiln's package does not take
NOT_IMPLEMENTED = (
    "allow_downgrade",
    "allowerasing",
    "auto_install_module_deps",
    "autoremove",
    "best",
    "bugfix",
    "cacheonly",
    "conf_file",
    "disable_excludes",
    "disable_gpg_check",
    "disable_plugin",
    "disablerepo",
    "download_dir",
    "download_only",
    "enable_plugin",
    "enablerepo",
    "exclude",
    "install_repoquery",
    "install_weak_deps",
    "installroot",
    "list",
    "lock_timeout",
    "nobest",
    "releasever",
    "security",
    "skip_broken",
    "sslverify",
    "update_only",
    "validate_certs",
)

# the dnf action's words on a box whose ansible_pkg_mgr is not dnf's (the action plugin, ansible-core 2.19)
UNDETECTED = (
    "Could not detect which major revision of dnf is in use, which is required to determine module backend. "
    "You should manually specify use_backend to tell the module whether to use the dnf4 or dnf5 backend"
)

SCHEMA = {
    "description": "Ansible's dnf (yum, dnf5): install, upgrade or remove packages on a dnf box; on another box "
    "(Debian's apt) the step fails when it runs, as Ansible's does. dnf's other arguments (exclude, enablerepo, ...) "
    "are accepted, and fail the step if it runs: kiln does not implement them.",
    "args": {
        "name": {
            **package.SCHEMA["args"]["name"],
            "aliases": ["pkg"],
            "description": "Package name or list of names (pin a version with name-1.2.3).",
        },
        "state": {
            "type": "str",
            "choices": list(STATES),
            "default": "present",
            "description": "present/installed, latest (the newest available), absent/removed.",
        },
        "update_cache": {
            "type": "bool",
            "default": False,
            "aliases": ["expire-cache"],
            "description": "Refresh the metadata first (dnf --refresh).",
        },
        "use_backend": {
            "type": "str",
            "choices": list(BACKENDS),
            "default": "auto",
            "description": "The backend Ansible's dnf action runs (auto: from the box's package manager).",
        },
        "use": {"type": "str", "description": "As use_backend (Ansible's dnf action takes either, not both)."},
    },
    "foreign_args": {name: "dnf" for name in NOT_IMPLEMENTED},
    "mutually_exclusive": [["use", "use_backend"]],  # dnf's own (name/list, best/nobest) are its run's to judge
    "check_mode": "full",
    "diff": True,
    "example": "- dnf: {name: nginx, state: present, exclude: python-unversioned-command}",
}


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    manager = package._manager(ctx)
    if manager != "dnf":
        backend = params.get("use") or params["use_backend"]
        if backend in ("auto", "yum"):
            raise ModuleError(UNDETECTED)
        raise ModuleError(f"dnf: use_backend {backend}, but this box's package manager is {manager}, not dnf")
    given = sorted(name for name in params if name in NOT_IMPLEMENTED)
    if given:
        raise ModuleError(f"dnf: kiln does not implement {', '.join(given)}")
    return package.check(as_package(params), ctx)


def as_package(params: Dict[str, Any]) -> Dict[str, Any]:
    """The package module's parameters for this step (its defaults for what dnf does not name)."""
    own = {"name": params["name"], "state": STATES[params["state"]], "update_cache": params["update_cache"]}
    return {**{name: spec["default"] for name, spec in package.SCHEMA["args"].items() if "default" in spec}, **own}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    return package.apply(as_package(params), state, ctx)
