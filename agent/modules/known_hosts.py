"""Ansible's ``known_hosts``: one host's key in a known_hosts file, as ansible-core edits it.

The host is looked up with ``ssh-keygen -F`` (so hashed entries are found too): a line of the same
key type with another key is replaced where it is, a missing key is added at the end, ``absent``
removes the host's line of that key type (without ``key``: ``ssh-keygen -R`` removes every line of
the host). ``hash_host`` writes the host hashed (a new salt each time, as ansible-core does; an
entry already hashed is left as it is). The key must name the host (``host[,alias] type key``).

Example::

    - known_hosts: {name: github.com, key: "github.com ssh-ed25519 AAAA...", path: /etc/ssh/ssh_known_hosts}
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from ..api import Context, ModuleError, Result, atomic_write, require_command, unified_diff
from ._results import path_info

SCHEMA = {
    "description": "Ansible's known_hosts: add or remove a host's key in a known_hosts file.",
    "args": {
        "name": {"type": "str", "required": True, "aliases": ["host"], "description": "The host (one name)."},
        "key": {"type": "str", "description": "The line to have: 'host[,alias] type key' (required when present)."},
        "path": {
            "type": "str",
            "default": "~/.ssh/known_hosts",
            "description": "The known_hosts file (~ is the user's home).",
        },
        "hash_host": {"type": "bool", "default": False, "description": "Write the host hashed."},
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present", "description": "Wanted."},
    },
    "check_mode": "full",
    "diff": True,
    "example": '- known_hosts: {name: github.com, key: "github.com ssh-ed25519 AAAA..."}',
}


def normalized(line: str) -> Dict[str, str]:
    """A key line as ansible-core compares them: marker, host field, type and key (no comment)."""
    words = line.strip().split()
    if words[0].startswith("@"):
        return {"options": words[0], "host": words[1], "type": words[2], "key": words[3]}
    return {"host": words[0], "type": words[1], "key": words[2]}


def hashed(host: str, key: str) -> str:
    salt = os.urandom(20)
    digest = hmac.new(salt, host.encode(), hashlib.sha1).digest()
    words = key.strip().split()
    at = 1 if words[0].startswith("@") else 0
    words[at] = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    return " ".join(words)


def lookup(ctx: Context, keygen: str, host: str, path: str) -> Tuple[int, str, str]:
    done = ctx.run([keygen, "-F", host, "-f", path], check=False)
    return done.rc, done.stdout, done.stderr


def names_the_host(ctx: Context, keygen: str, host: str, key: str) -> None:
    if re.search(r"\S+(\s+)?,(\s+)?", host):
        raise ModuleError(
            "Comma separated list of names is not supported. "
            "Please pass a single name to lookup in the known_hosts file."
        )
    with tempfile.NamedTemporaryFile(mode="w+") as handle:
        handle.write(key)
        handle.flush()
        if lookup(ctx, keygen, host, handle.name)[1] == "":
            raise ModuleError("Host parameter does not match hashed host field in supplied key")


def search(ctx: Context, keygen: str, host: str, key: Optional[str], path: str) -> Tuple[bool, bool, Optional[int]]:
    """(the host is there, its key of that type differs or is missing, the line of that key)."""
    if not os.path.exists(path):
        return False, False, None
    rc, out, err = lookup(ctx, keygen, host, path)
    if out == "" and err == "" and rc in (0, 1):
        return False, False, None
    if rc != 0:
        raise ModuleError(f"ssh-keygen failed (rc={rc}, stdout='{out}',stderr='{err}')")
    if not key:
        return True, False, None
    wanted = normalized(key)
    line_no: Optional[int] = None
    for line in out.split("\n"):
        if not line:
            continue
        if line.startswith("#"):
            found = re.search(r"found: line (\d+)", line)
            line_no = int(found.group(1)) if found else line_no
            continue
        there = normalized(line)
        if there.get("options", "")[:15] == "@cert-authority" or there.get("options", "")[:7] == "@revoke":
            if wanted == there:
                return True, False, line_no
            continue
        if wanted["host"][:3] == "|1|" and there["host"][:3] == "|1|":  # a hashed host keeps its hash
            wanted["host"] = there["host"]
        if wanted == there:
            return True, False, line_no
        if wanted["type"] == there["type"]:
            return True, True, line_no
    return True, True, None


def new_text(before: str, line_no: Optional[int], drop: bool, key: Optional[str]) -> str:
    lines: List[str] = before.splitlines(True)
    if drop and line_no is not None and 1 <= line_no <= len(lines):
        del lines[line_no - 1]
    if key:
        lines.append(key)
    return "".join(lines)


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    host, key, path = params["name"].lower(), params.get("key"), os.path.expanduser(params["path"])
    keygen = require_command("ssh-keygen", "install openssh-client")
    if not key and params["state"] != "absent":
        raise ModuleError("No key specified when adding a host")
    if key and params["hash_host"]:
        key = hashed(host, key)
    if key and not key.endswith("\n"):
        key += "\n"
    if key:
        names_the_host(ctx, keygen, host, key)
    found, replace, line_no = search(ctx, keygen, host, key, path)
    before = ""
    if os.path.isfile(path):
        with open(path) as handle:
            before = handle.read()
    return {"host": host, "key": key, "path": path, "keygen": keygen, "found": found, "replace": replace,
            "line": line_no, "before": before}  # fmt: skip


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    present = params["state"] == "present"
    found, replace, line_no, key, path = state["found"], state["replace"], state["line"], state["key"], state["path"]
    after = new_text(
        state["before"], line_no, replace or not present, key if present and (replace or line_no is None) else None
    )
    diff = {"unified": unified_diff(state["before"], after, path)} if after != state["before"] else None
    if not present and line_no is None and key:
        return Result(False, f"{state['host']} is not in {path}", data=described(params, path))
    changed = replace or present != found
    if ctx.check_mode:  # ansible-core's check mode returns before its arguments join the result
        return Result(changed, f"{state['host']} in {path}", diff=diff)
    if found and not key and not present:  # every line of the host; ssh-keygen keeps the old file as path.old
        ctx.run([state["keygen"], "-R", state["host"], "-f", path])
    elif changed:
        if not os.path.isdir(os.path.dirname(path) or "."):
            raise ModuleError(f"Failed to write to file {path!r}.")
        atomic_write(
            path, new_text(state["before"], line_no, replace or not present, key if present else None).encode()
        )
    return Result(changed, f"{state['host']} {params['state']} in {path}", diff=diff, data=described(params, path))


def described(params: Dict[str, Any], path: str) -> Dict[str, Any]:
    """The module's arguments and the file, as ansible-core's result has them."""
    return {**params, "path": path, **path_info(path)}
