"""community.general's ``alternatives``: a Debian alternative (update-alternatives), as the collection sets it.

``update-alternatives --display NAME`` is read first (mode, current path and link, each alternative's
priority, family and followers). ``present`` installs ``path`` (with ``link``, ``priority`` — 50, or
the one it has — ``family`` and ``subcommands``) when it is missing or differs; ``selected`` (the
default) also sets it, unless the current one is it (or of its family); ``auto`` installs it and
returns the name to automatic mode; ``absent`` removes it. The messages are the collection's.

Example::

    - community.general.alternatives: {name: editor, path: /usr/bin/vim.basic}
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional

from ..api import Context, ModuleError, Result, require_command

MODE = re.compile(r"\s-\s(?:status\sis\s)?(\w*)(?:\smode|.)$", re.MULTILINE)
CURRENT_PATH = re.compile(r"^\s*link currently points to (.*)$", re.MULTILINE)
CURRENT_LINK = re.compile(r"^\s*link \w+ is (.*)$", re.MULTILINE)
FOLLOWER_LINK = re.compile(r"^\s*(?:slave|follower) (\S+) is (.*)$", re.MULTILINE)
ALTERNATIVE = re.compile(r"^(\/.*)\s-\s(?:family\s(\S+)\s)?priority\s(\d+)((?:\s+(?:slave|follower).*)*)", re.MULTILINE)
FOLLOWER = re.compile(r"^\s+(?:slave|follower) (.*): (.*)$", re.MULTILINE)

SCHEMA = {
    "description": "community.general's alternatives: install, select or remove a Debian alternative.",
    "args": {
        "name": {"type": "str", "required": True, "description": "The alternative's name (editor, java, ...)."},
        "path": {"type": "path", "description": "The alternative (the real program)."},
        "family": {"type": "str", "description": "A family of alternatives to select."},
        "link": {"type": "path", "description": "The generic link (/usr/bin/editor); the current one by default."},
        "priority": {"type": "int", "description": "Its priority (50, or the one it has)."},
        "state": {
            "type": "str",
            "choices": ["present", "selected", "absent", "auto"],
            "default": "selected",
            "description": "present, selected (present and chosen), auto (present, automatic mode) or absent.",
        },
        "subcommands": {
            "type": "list",
            "aliases": ["slaves"],
            "elements": "dict",
            "description": "Followers (--slave) that change with it: each {name, path, link}.",
        },
    },
    "required_one_of": [["path", "family"]],
    "check_mode": "full",
    "diff": False,
    "example": "- alternatives: {name: editor, path: /usr/bin/vim.basic}",
}


def parse(text: str, subcommands: Optional[List[Dict[str, Any]]]) -> Dict[str, Any]:
    """What --display says: mode, current path and link, and each alternative as the collection reads it."""
    found: Dict[str, Any] = {"mode": None, "path": None, "link": None, "alternatives": {}}
    mode = MODE.search(text)
    if not mode:
        return found
    found["mode"] = mode.group(1)
    path, link = CURRENT_PATH.search(text), CURRENT_LINK.search(text)
    found["path"] = path.group(1) if path else None
    found["link"] = link.group(1) if link else None
    links = dict(FOLLOWER_LINK.findall(text)) or {s["name"]: s["link"] for s in subcommands or []}
    for alt, family, priority, followers in ALTERNATIVE.findall(text):
        found["alternatives"][alt] = {
            "priority": int(priority),
            "family": family,
            "subcommands": [
                {"name": name, "path": spath, "link": links.get(name)}
                for name, spath in FOLLOWER.findall(followers)
                if spath != "(null)"
            ],
        }
    return found


def followers(given: Optional[List[Any]]) -> Optional[List[Dict[str, Any]]]:
    """subcommands as the collection's options have them: name, path and link, each required."""
    if given is None:
        return None
    found = []
    for index, item in enumerate(given):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("name", "path", "link")):
            raise ModuleError(f"subcommands[{index}]: needs name, path and link (strings), got {item!r}")
        unknown = set(item) - {"name", "path", "link"}
        if unknown:
            raise ModuleError(f"subcommands[{index}]: unsupported parameters: {', '.join(sorted(unknown))}")
        found.append({"name": item["name"], "path": item["path"], "link": item["link"]})
    return found


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    params["subcommands"] = followers(params.get("subcommands"))
    tool = require_command("update-alternatives", "install dpkg")
    done = ctx.run([tool, "--display", params["name"]], check=False, env={"LC_ALL": "C"})
    there = parse(done.stdout, params.get("subcommands")) if done.rc == 0 else parse("", None)
    if there["mode"] is None:
        there = {"mode": None, "path": None, "link": None, "alternatives": {}}
    return {"tool": tool, **there}


def needs_install(params: Dict[str, Any], state: Dict[str, Any]) -> bool:
    path, wanted = params.get("path"), params.get("subcommands")
    if path is None:
        return False
    alt = state["alternatives"].get(path)
    if alt is None:
        return True
    if params.get("priority") is not None and alt["priority"] != params["priority"]:
        return True
    return wanted is not None and (
        not all(s in wanted for s in alt["subcommands"]) or not all(s in alt["subcommands"] for s in wanted)
    )


def install_argv(params: Dict[str, Any], state: Dict[str, Any]) -> List[str]:
    path, alt = params["path"], state["alternatives"].get(params["path"], {})
    if not os.path.exists(path):
        raise ModuleError(f"Specified path {path} does not exist")
    link = params.get("link") or state["link"]
    if not link:
        raise ModuleError("Needed to install the alternative, but unable to do so as we are missing the link")
    priority = params["priority"] if params.get("priority") is not None else alt.get("priority", 50)
    argv = [state["tool"], "--install", link, params["name"], path, str(priority)]
    if params.get("family") is not None:
        argv += ["--family", params["family"]]
    if params.get("subcommands") is not None:
        for follower in params["subcommands"]:
            argv += ["--slave", follower["link"], follower["name"], follower["path"]]
    return argv


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    name, path, tool = params["name"], params.get("path"), state["tool"]
    commands, messages = [], []
    if params["state"] == "absent":
        if path in state["alternatives"]:
            commands.append([tool, "--remove", name, path])
            messages.append(f"Remove alternative '{path}' from '{name}'.")
    else:
        if needs_install(params, state):
            commands.append(install_argv(params, state))
            messages.append(f"Install alternative '{path}' for '{name}'.")
        current = state["alternatives"].get(state["path"]) if state["path"] is not None else None
        same_path = path is not None and state["path"] == path
        same_family = current is not None and current.get("family") == params.get("family")
        if params["state"] == "selected" and not (same_path or same_family):
            chosen = params.get("family") if path is None else path
            commands.append([tool, "--set", name, chosen])
            messages.append(f"Set alternative '{chosen}' for '{name}'.")
        if params["state"] == "auto" and state["mode"] == "manual":
            commands.append([tool, "--auto", name])
            messages.append(f"Set alternative to auto for '{name}'.")
    if not ctx.check_mode:
        for argv in commands:
            ctx.run(argv, env={"LC_ALL": "C"})
    return Result(bool(commands), " ".join(messages))
