"""Ansible's ``setup``: gather the facts again (after a step that changed them), as ``ansible_facts``.

The box's facts are read again, with Ansible's names and values (the ones kiln gathers at the start,
docs/ansible.md), and replace the ones the later steps see: ``ansible_facts.<name>`` and
``ansible_<name>``. ``filter`` keeps the facts whose ``ansible_<name>`` matches one of its shell
patterns. Local facts are read from ``fact_path`` (``*.fact``: JSON or INI, or an executable printing
JSON) into ``ansible_local``, as ansible-core does. kiln gathers its one set whatever
``gather_subset`` says. Changes nothing.

Example::

    - setup: {filter: [ansible_distribution*, ansible_default_ipv4]}
"""

from __future__ import annotations

import configparser
import fnmatch
import glob
import json
import os
from typing import Any, Dict

from .. import facts as box_facts
from ..api import Context, Result

SCHEMA = {
    "description": "Ansible's setup: gather the box's facts again (ansible_facts, ansible_*).",
    "args": {
        "filter": {
            "type": "list",
            "elements": "str",
            "default": [],
            "description": "Shell patterns of the ansible_<name> facts to keep (all by default).",
        },
        "gather_subset": {
            "type": "list",
            "elements": "str",
            "default": ["all"],
            "description": "Accepted: kiln gathers its one set of facts.",
        },
        "gather_timeout": {"type": "int", "default": 10, "description": "Accepted (kiln's facts are read at once)."},
        "fact_path": {"type": "str", "default": "/etc/ansible/facts.d", "description": "Local facts (*.fact)."},
    },
    "check_mode": "full",
    "diff": False,
    "example": "- setup: {filter: [ansible_distribution*]}",
}


def local_fact(path: str, ctx: Context) -> Any:
    """One ``.fact`` file as ansible-core reads it: an executable's JSON output, else JSON, else INI."""
    if os.access(path, os.X_OK):
        done = ctx.run([path], check=False)
        text = done.stdout if done.rc == 0 else ""
        if done.rc != 0:
            return f'error loading fact - output of running "{path}" was not utf-8'
    else:
        with open(path, errors="replace") as handle:
            text = handle.read()
    try:
        return json.loads(text)
    except ValueError:
        parser = configparser.ConfigParser()
        try:
            parser.read_string(text)
        except configparser.Error:
            return "error loading facts as JSON or ini - please check content: " + path
        return {section: dict(parser.items(section)) for section in parser.sections()}


def local_facts(folder: str, ctx: Context) -> Dict[str, Any]:
    found = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.fact"))):
        found[os.path.basename(path)[: -len(".fact")]] = local_fact(path, ctx)
    return found


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    gathered = box_facts.gather()
    named = {f"ansible_{name}": value for name, value in gathered["ansible"].items()}
    if os.path.isdir(params["fact_path"]):
        named["ansible_local"] = local_facts(params["fact_path"], ctx)
    return {"kiln": gathered, "named": named}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    named = state["named"]
    if params["filter"]:  # only these are read again, as in ansible-core
        named = {k: v for k, v in named.items() if any(fnmatch.fnmatch(k, p) for p in params["filter"])}
    else:  # the later steps' facts (kiln's names too) are the ones just read
        ctx.facts.clear()
        ctx.facts.update(state["kiln"])
    return Result(False, f"gathered {len(named)} facts", data={"ansible_facts": named})
