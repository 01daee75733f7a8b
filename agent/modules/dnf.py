"""Ansible's ``dnf`` (and ``yum`` and ``dnf5``, which Ansible runs as dnf): kiln's package module on dnf.

ansible-core's dnf action picks its backend from the box's package manager, and on a box whose
manager is neither dnf nor yum (Debian's apt) it fails, whatever the arguments: a RedHat-only task
fails on Debian only if its ``when`` lets it run. So does this module, in Ansible's words. On a dnf
box, name, state and update_cache are the package module's; dnf's other arguments (exclude,
enablerepo, ...) are accepted at validate and fail the step when it runs: kiln does not implement them.
Other managers' arguments (apt's install_recommends, ...) are accepted too, and refused when the step
runs on dnf in ansible-core's dnf's words, as there; a name no manager takes is refused at validate.

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

# dnf's arguments kiln runs (names and aliases): the others' meaning is dnf's run's
OWN = ("name", "pkg", "state", "update_cache", "expire-cache", "use_backend", "use")

# ansible-core 2.19's dnf's words when it refuses an argument (its own list of what it takes)
DNF_SUPPORTED = (
    "allow_downgrade, allowerasing, autoremove, best, bugfix, cacheonly, conf_file, disable_excludes, "
    "disable_gpg_check, disable_plugin, disablerepo, download_dir, download_only, enable_plugin, enablerepo, exclude, "
    "install_repoquery, install_weak_deps, installroot, list, lock_timeout, name, nobest, releasever, security, "
    "skip_broken, sslverify, state, update_cache, update_only, use_backend, validate_certs (expire-cache, pkg)"
)


def other_managers_args() -> Dict[str, str]:
    """apt's and the other managers' arguments, name -> who takes them: dnf refuses them when it runs."""
    apt = {
        spelling: "apt"
        for name, spec in package.SCHEMA["args"].items()
        if name not in OWN
        for spelling in (name, *spec.get("aliases", []))
    }
    apt["update"] = "apt"  # package's alias of update_cache (apt's), not dnf's
    others = {**package.FOREIGN_ARGS, **apt}
    return {name: taker for name, taker in sorted(others.items()) if name not in NOT_IMPLEMENTED + OWN}


OTHERS = other_managers_args()

# the dnf action's words on a box whose ansible_pkg_mgr is not dnf's (the action plugin, ansible-core 2.19)
UNDETECTED = (
    "Could not detect which major revision of dnf is in use, which is required to determine module backend. "
    "You should manually specify use_backend to tell the module whether to use the dnf4 or dnf5 backend"
)

SCHEMA = {
    "description": "Ansible's dnf (yum, dnf5): install, upgrade or remove packages on a dnf box; on another box "
    "(Debian's apt) the step fails when it runs, as Ansible's does. dnf's other arguments (exclude, enablerepo, ...) "
    "are accepted, and fail the step if it runs: kiln does not implement them; other managers' fail it as dnf does.",
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
    "foreign_args": {**OTHERS, **{name: "dnf" for name in NOT_IMPLEMENTED}},
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
    unsupported = sorted(name for name in params if name in OTHERS)
    if unsupported:
        raise package.unsupported_parameters("dnf", unsupported, DNF_SUPPORTED)
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
