"""Ansible's ``apt``: kiln's package module on apt, with Ansible's defaults.

The one difference from ``package`` is install_recommends: unset, apt's own setting decides
(Debian installs recommended packages), as ansible-core's apt does; kiln's ``package`` leaves
them out unless asked. Everything else (reading installed versions first, the cache's age,
check mode) is the package module's.

Example::

    - apt: {name: nginx, default_release: bookworm-backports, install_recommends: false}
"""

from __future__ import annotations

from typing import Any, Dict

from ..api import Context, ModuleError, Result
from . import package

SCHEMA = {
    **package.SCHEMA,
    "description": "Ansible's apt: install, upgrade or remove Debian packages (recommends as apt is configured).",
    "args": {
        **package.SCHEMA["args"],
        "name": {
            **package.SCHEMA["args"]["name"],
            "required": False,
            "default": [],
            "description": "Package name or list of names (pin a version with name=1.2.3); none: only refresh "
            "the index (update_cache).",
        },
        "install_recommends": {
            "type": "bool",
            "aliases": ["install-recommends"],
            "description": "Install recommended packages too (true) or not (false); unset: apt's own setting.",
        },
        "upgrade": {
            "type": "raw",
            "description": "Upgrade the installed packages instead: yes/safe (apt-get upgrade --with-new-pkgs), "
            "dist/full (apt-get dist-upgrade), no; true is yes. Packages in name are not installed then.",
        },
        "autoremove": {
            "type": "bool",
            "default": False,
            "description": "Remove the packages nothing needs any more (--auto-remove; alone: apt-get autoremove).",
        },
        "autoclean": {
            "type": "bool",
            "default": False,
            "description": "Without name: drop downloaded packages that can no longer be fetched (apt-get autoclean).",
        },
        "only_upgrade": {
            "type": "bool",
            "default": False,
            "description": "Only upgrade packages already installed (--only-upgrade).",
        },
        "allow_downgrade": {
            "type": "bool",
            "default": False,
            "aliases": ["allow-downgrade", "allow_downgrades", "allow-downgrades"],
            "description": "Allow a pinned version older than the installed one (--allow-downgrades).",
        },
        "dpkg_options": {
            "type": "str",
            "default": "force-confdef,force-confold",
            "description": "dpkg options, comma-separated (each as -o Dpkg::Options::=--OPTION).",
        },
        "force": {"type": "bool", "default": False, "description": "apt-get --force-yes (dangerous)."},
        "allow_unauthenticated": {
            "type": "bool",
            "default": False,
            "aliases": ["allow-unauthenticated"],
            "description": "Install packages that cannot be authenticated (--allow-unauthenticated).",
        },
        "fail_on_autoremove": {
            "type": "bool",
            "default": False,
            "description": "Fail rather than remove packages an install would remove (--no-remove).",
        },
    },
    "required_one_of": [["name", "update_cache", "cache_valid_time", "upgrade", "autoremove", "autoclean"]],
    "example": "- apt: {name: nginx, default_release: bookworm-backports, install_recommends: false}",
}


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    state = package.check(params, ctx)
    if state["manager"] != "apt":
        raise ModuleError(f"apt: this box's package manager is {state['manager']}, not apt (use package)")
    return state


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    return package.apply(params, state, ctx)
