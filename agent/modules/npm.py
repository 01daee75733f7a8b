"""community.general's ``npm``: install, upgrade or remove Node.js packages, globally or in a directory.

As the collection's module does: ``npm list --json --long`` is read first; a package named (or, with
``path`` alone, any dependency of its package.json) that is missing, invalid or of another version
is installed (``npm install``); ``latest`` also runs ``npm update`` when ``npm outdated`` lists it;
``absent`` uninstalls a package that is there; ``ci`` always runs ``npm ci`` (a change). The flags
go to npm in the collection's order. The box needs npm (Debian's ``npm`` package, say).

Example::

    - npm: {name: typescript, version: "5.4.5", global: true}
    - npm: {path: /srv/app, production: true}
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Dict, List, Optional, Tuple

from ..api import Context, ModuleError, Result

FLAGS = (
    ("ignore_scripts", "--ignore-scripts"),
    ("unsafe_perm", "--unsafe-perm"),
)
LATE_FLAGS = (
    ("no_optional", "--no-optional"),
    ("no_bin_links", "--no-bin-links"),
    ("force", "--force"),
)

SCHEMA = {
    "description": "community.general's npm: install (present), upgrade (latest) or remove (absent) a Node.js "
    "package, globally or in path; path alone installs its package.json's dependencies.",
    "args": {
        "name": {"type": "str", "description": "The package (none: path's package.json)."},
        "path": {
            "type": "path",
            "description": "The directory npm runs in (created if missing); required unless global.",
        },
        "version": {"type": "str", "description": "The version to install (name@version)."},
        "global": {"type": "bool", "default": False, "description": "Install globally (npm --global)."},
        "executable": {"type": "path", "description": "The npm to run (words split on blanks); default: npm."},
        "registry": {"type": "str", "description": "The registry to install from (--registry)."},
        "production": {
            "type": "bool",
            "default": False,
            "description": "Leave devDependencies out (--production, with install, update and ci).",
        },
        "state": {
            "type": "str",
            "choices": ["present", "absent", "latest"],
            "default": "present",
            "description": "present: installed (as version, if given); latest: npm update when outdated; absent.",
        },
        "ignore_scripts": {"type": "bool", "default": False, "description": "--ignore-scripts."},
        "unsafe_perm": {"type": "bool", "default": False, "description": "--unsafe-perm."},
        "ci": {"type": "bool", "default": False, "description": "npm ci: install from package-lock.json (a change)."},
        "no_optional": {"type": "bool", "default": False, "description": "--no-optional."},
        "no_bin_links": {"type": "bool", "default": False, "description": "--no-bin-links."},
        "force": {"type": "bool", "default": False, "description": "--force."},
    },
    "required_if": [["state", "absent", ["name"]]],
    "check_mode": "full",
    "diff": False,
    "example": "- npm: {name: typescript, global: true}",
}


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    if not params.get("path") and not params["global"]:
        raise ModuleError("path must be specified when not using global")
    npm = executable(params, ctx)
    installed, missing = listed(params, npm, ctx)
    return {"npm": npm, "installed": installed, "missing": missing}


def executable(params: Dict[str, Any], ctx: Context) -> List[str]:
    if params.get("executable"):
        return params["executable"].split(" ")
    path = ctx.environment.get("PATH", os.environ.get("PATH", ""))
    found = shutil.which("npm", path=path)
    if not found:
        raise ModuleError(f'Failed to find required executable "npm" in paths: {path}')
    return [found]


def name_version(params: Dict[str, Any]) -> Optional[str]:
    if params.get("version") and params["state"] != "absent":
        return f"{params['name']}@{params['version']}"
    return params.get("name")


def command(params: Dict[str, Any], npm: List[str], args: List[str], with_name: bool = True) -> List[str]:
    """npm's argv in the collection's order: the command, --global, --production, ..., the package, the rest."""
    argv = [*npm, *args]
    argv += ["--global"] if params["global"] else []
    argv += ["--production"] if params["production"] and args[0] in ("install", "update", "ci") else []
    argv += [flag for name, flag in FLAGS if params[name]]
    package = name_version(params) if with_name else None
    argv += [package] if package else []
    argv += ["--registry", params["registry"]] if params.get("registry") else []
    return argv + [flag for name, flag in LATE_FLAGS if params[name]]


def npm_run(params: Dict[str, Any], npm: List[str], args: List[str], ctx: Context, **kwargs: Any) -> str:
    """Run npm in path (made first, as the collection makes it); a failed install, update or uninstall fails."""
    cwd = params.get("path")
    if cwd:
        os.makedirs(cwd, exist_ok=True)
        if not os.path.isdir(cwd):
            raise ModuleError(f"path {cwd} is not a directory")
    with_name = kwargs.pop("with_name", True)
    return ctx.run(command(params, npm, args, with_name), cwd=cwd, timeout=1800, **kwargs).stdout


def listed(params: Dict[str, Any], npm: List[str], ctx: Context) -> Tuple[List[str], List[Optional[str]]]:
    """What npm list says is installed (name and name@version) and which wanted ones are missing."""
    try:
        data = json.loads(npm_run(params, npm, ["list", "--json", "--long"], ctx, check=False, with_name=False) or "{}")
    except ValueError as exc:
        raise ModuleError(f"Failed to parse NPM output with error {exc}") from None
    installed: List[str] = []
    missing: List[Optional[str]] = []
    if "dependencies" not in data:
        return installed, [params.get("name")]
    for dep, props in data["dependencies"].items():
        if props.get("missing") or props.get("invalid"):
            missing.append(dep)
            continue
        installed.append(dep)
        if props.get("version"):
            installed.append(f"{dep}@{props['version']}")
    wanted = name_version(params)
    if wanted and wanted not in installed:
        missing.append(params["name"])
    return installed, missing


def outdated(params: Dict[str, Any], npm: List[str], ctx: Context) -> List[str]:
    said = npm_run(params, npm, ["outdated"], ctx, check=False)
    return [re.split(r"\s|@", line, maxsplit=1)[0] for line in said.splitlines() if line]


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    npm, what = state["npm"], params.get("name") or params.get("path")
    todo: List[List[str]] = []
    if params["ci"]:
        todo = [["ci"]]
    elif params["state"] == "absent":
        todo = [["uninstall"]] if params["name"] in state["installed"] else []
    else:
        todo = [["install"]] if state["missing"] else []
        if params["state"] == "latest" and outdated(params, npm, ctx):
            todo.append(["update"])
    if not todo:
        return Result(False, f"{what}: already {params['state']}")
    done = " and ".join(f"npm {args[0]}" for args in todo)
    if ctx.check_mode:
        return Result(True, f"{what}: would {done} (check mode)")
    for args in todo:
        npm_run(params, npm, args, ctx)
    return Result(True, f"{what}: {done}")
