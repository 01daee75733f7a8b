"""Check that packages are installed (or not), optionally at given versions.

Example::

    - package: nginx
    - package: {name: telnet, installed: false}
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from ..api import Context, ModuleError, as_list
from ..modules import package as pkgmod

SCHEMA = {
    "description": "A package is installed (or not), optionally at one of the given versions.",
    "free_form": "name",
    "args": {
        "name": {"type": "str", "required": True, "description": "Package name."},
        "installed": {"type": "bool", "default": True, "description": "true: installed; false: not installed."},
        "versions": {
            "type": "list",
            "elements": "str",
            "description": "The installed version must be one of these (prefix glob with *).",
        },
    },
    "example": "- package: nginx\n- package: {name: telnet, installed: false}",
}


def probe(params: Dict[str, Any], ctx: Context) -> Tuple[bool, str]:
    name = params["name"]
    try:
        manager = pkgmod._manager(ctx)
    except ModuleError as exc:
        return False, exc.msg
    if manager == "apt":
        version = pkgmod.apt_installed([name], ctx)[name]
    else:
        version = pkgmod.rpm_installed([name], ctx)[name]
    seen = f"{name} {version} installed" if version else f"{name} not installed"
    if not params["installed"]:
        return version is None, seen
    if version is None:
        return False, seen
    versions: List[str] = as_list(params.get("versions"))
    if versions:
        import fnmatch

        if not any(fnmatch.fnmatchcase(version, v) for v in versions):
            return False, f"{seen}, not one of {', '.join(versions)}"
    return True, seen
