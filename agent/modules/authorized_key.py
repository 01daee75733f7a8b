"""ansible.posix's ``authorized_key``: SSH public keys in a user's authorized_keys, as the collection edits it.

``key`` holds one key or several (one a line; ``#`` lines skipped), or ``file://PATH`` on the box.
Lines are read as the collection reads them: options, a key type, the key, a comment; a line with
no known key type is kept as it is. A key is identified by its base64 text: ``present`` adds it at
the end (or replaces a line with the same key whose type, options or comment differ, in the place
of the new one), ``absent`` removes it, ``exclusive`` removes every other key. Written lines are
``[options ]type key comment`` (a key without a comment ends with a blank, as the collection writes
it). ``manage_dir`` makes ``~/.ssh`` (0700, the user's); the file is the user's, 0600.

Example::

    - ansible.posix.authorized_key: {user: deploy, key: "{{ lookup('file', 'deploy.pub') }}"}
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
from typing import Any, Dict, List, Optional, Tuple

from ..api import Context, ModuleError, Result, atomic_write, unified_diff
from ._results import path_info

KEY_TYPES = frozenset(
    """sk-ecdsa-sha2-nistp256@openssh.com sk-ecdsa-sha2-nistp256-cert-v01@openssh.com
    webauthn-sk-ecdsa-sha2-nistp256@openssh.com ecdsa-sha2-nistp256 ecdsa-sha2-nistp256-cert-v01@openssh.com
    ecdsa-sha2-nistp384 ecdsa-sha2-nistp384-cert-v01@openssh.com ecdsa-sha2-nistp521
    ecdsa-sha2-nistp521-cert-v01@openssh.com sk-ssh-ed25519@openssh.com sk-ssh-ed25519-cert-v01@openssh.com
    ssh-ed25519 ssh-ed25519-cert-v01@openssh.com ssh-dss ssh-rsa ssh-xmss@openssh.com ssh-xmss-cert-v01@openssh.com
    rsa-sha2-256 rsa-sha2-512 ssh-rsa-cert-v01@openssh.com rsa-sha2-256-cert-v01@openssh.com
    rsa-sha2-512-cert-v01@openssh.com ssh-dss-cert-v01@openssh.com""".split()
)
OPTION = re.compile(r"""((?:[^,"']|"[^"]*"|'[^']*')+)""")

SCHEMA = {
    "description": "ansible.posix's authorized_key: add or remove SSH public keys in a user's authorized_keys.",
    "args": {
        "user": {"type": "str", "required": True, "description": "The user whose authorized_keys it is."},
        "key": {
            "type": "str",
            "required": True,
            "description": "The key(s), one a line, or file://PATH on the box.",
        },
        "path": {"type": "path", "description": "Another file than ~user/.ssh/authorized_keys."},
        "manage_dir": {"type": "bool", "default": True, "description": "Make the file's folder (0700, the user's)."},
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present", "description": "Wanted."},
        "key_options": {"type": "str", "description": "Options written before each key (from=...,no-pty)."},
        "exclusive": {"type": "bool", "default": False, "description": "Remove every other key."},
        "comment": {"type": "str", "description": "The comment written after each key."},
        "validate_certs": {"type": "bool", "default": True, "description": "Accepted (kiln reads no URL keys)."},
        "follow": {"type": "bool", "default": False, "description": "Write through a symlinked file."},
    },
    "check_mode": "full",
    "diff": True,
    "example": "- authorized_key: {user: deploy, key: 'ssh-ed25519 AAAA... deploy@laptop'}",
}

# (key text, type, options [(name, value or None)], comment, rank); type "skipped" keeps the line as it is
Entry = Tuple[str, str, Optional[List[Tuple[str, Optional[str]]]], Optional[str], int]


def parse_options(text: Optional[str]) -> List[Tuple[str, Optional[str]]]:
    found: List[Tuple[str, Optional[str]]] = []
    for part in OPTION.split(text or "")[1:-1]:
        if "=" in part:
            name, value = part.split("=", 1)
            found.append((name, value))
        elif part != ",":
            found.append((part, None))
    return found


def parse_key(raw: str, rank: int) -> Optional[Entry]:
    """One line as (key, type, options, comment, rank); None when it has no known key type."""
    raw = raw.replace(r"\#", "#")
    lexer = shlex.shlex(raw)
    lexer.quotes = ""
    lexer.commenters = ""
    lexer.whitespace_split = True
    words = list(lexer)
    if words and words[0] == "#":
        return (raw, "skipped", None, None, rank)
    at = next((i for i, word in enumerate(words) if word in KEY_TYPES), None)
    if at is None:
        return None
    if at + 1 >= len(words):
        raise ModuleError(f"invalid key specified: {raw.strip()}")
    options = parse_options(" ".join(words[:at]) if at else None)
    return (words[at + 1], words[at], options, " ".join(words[at + 2 :]), rank)


def parse_file(text: str) -> Dict[str, Entry]:
    entries: Dict[str, Entry] = {}
    for rank, line in enumerate(text.splitlines(True)):
        entry = parse_key(line, rank)
        entries[entry[0] if entry else line] = entry or (line, "skipped", None, None, rank)
    return entries


def serialize(entries: Dict[str, Entry]) -> str:
    lines = []
    for key, kind, options, comment, _rank in sorted(entries.values(), key=lambda entry: entry[4]):
        if kind == "skipped":
            lines.append(key)
            continue
        written = ",".join(name if value is None else f"{name}={value}" for name, value in options or [])
        lines.append(f"{written + ' ' if written else ''}{kind} {key} {comment}\n")
    return "".join(lines)


def wanted_keys(text: str) -> str:
    if text.startswith("http"):
        raise ModuleError(f"Error getting key from: {text} (kiln does not fetch keys: ship them in the role's files/)")
    if text.startswith("file"):
        path = text.split("://", 1)[-1] if "://" in text else text[len("file:") :]
        if not os.path.exists(path):
            raise ModuleError(f"Path to a key file not found: {path}")
        if not os.path.isfile(path):
            raise ModuleError(f"Path to a key is a directory and must be a file: {path}")
        with open(path) as handle:
            return handle.read()
    return text


def same(one: Entry, other: Entry) -> bool:
    """Equal as the collection compares them: options by name, whatever their order."""

    def by_name(options: Optional[List[Tuple[str, Optional[str]]]]) -> Dict[str, List[Optional[str]]]:
        named: Dict[str, List[Optional[str]]] = {}
        for name, value in options or []:
            named.setdefault(name, []).append(value)
        return named

    return one[:2] == other[:2] and one[3] == other[3] and by_name(one[2]) == by_name(other[2])


def edit(params: Dict[str, Any], text: str, keys: str) -> Tuple[str, bool]:
    """(the new file text, whether it changed)."""
    entries = parse_file(text)
    count, changed, kept = len(entries), False, []
    present = params["state"] == "present"
    for rank, line in enumerate(line for line in keys.splitlines() if line and not line.startswith("#")):
        new = parse_key(line, rank)
        if new is None or new[1] == "skipped":
            raise ModuleError(f"invalid key specified: {line}")
        if params.get("key_options") is not None:
            new = (new[0], new[1], parse_options(params["key_options"]), new[3], new[4])
        if params.get("comment") is not None:
            new = (new[0], new[1], new[2], params["comment"], new[4])
        there = entries.get(new[0])
        matched = there is not None and (same(there, new) or not present)
        if present:
            kept.append(new[0])
            if there is not None and not matched:
                del entries[new[0]]
                changed = True
            if not matched:
                entries[new[0]] = new[:4] + (count + new[4],)
                changed = True
        elif matched:
            del entries[new[0]]
            changed = True
    if present and params["exclusive"]:
        for other in [key for key in entries if key not in kept]:
            del entries[other]
            changed = True
    return serialize(entries), changed


def keys_file(params: Dict[str, Any], ctx: Context) -> Tuple[str, Optional[pwd.struct_passwd]]:
    path = params.get("path")
    if ctx.check_mode and path is not None:
        return (os.path.realpath(path) if params["follow"] else path), None
    try:
        entry = pwd.getpwnam(params["user"])
    except KeyError as exc:
        if ctx.check_mode:
            raise ModuleError(
                "Either user must exist or you must provide full path to key file in check mode"
            ) from None
        raise ModuleError(f"Failed to lookup user {params['user']}: {exc}") from None
    return (path if path is not None else os.path.join(entry.pw_dir, ".ssh", "authorized_keys")), entry


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    path, entry = keys_file(params, ctx)
    text = ""
    if os.path.isfile(path):
        with open(path) as handle:
            text = handle.read()
    return {"path": path, "text": text, "uid": entry.pw_uid if entry else None, "gid": entry.pw_gid if entry else 0}


def write(params: Dict[str, Any], state: Dict[str, Any], text: str) -> str:
    path, uid, gid = state["path"], state["uid"], state["gid"]
    if params["follow"]:
        path = os.path.realpath(path)
    folder = os.path.dirname(path)
    if params["manage_dir"]:
        if not os.path.exists(folder):
            os.mkdir(folder, 0o700)
        os.chown(folder, uid, gid)
        os.chmod(folder, 0o700)
    os.makedirs(folder, exist_ok=True)
    atomic_write(path, text.encode(), mode=0o600)
    try:
        os.chown(path, uid, gid)
    except OSError:
        pass
    return path


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    after, changed = edit(params, state["text"], wanted_keys(params["key"]))
    data = {**params, "keyfile": state["path"]}
    if changed and not ctx.check_mode:
        write(params, state, after)
    if params.get("path"):  # the module's arguments come back, and ansible-core describes a given path
        data.update(path_info(params["path"]))
    if not changed:
        return Result(False, f"{state['path']} has the keys as wanted", data=data)
    diff = {"unified": unified_diff(state["text"], after, state["path"])}
    return Result(True, f"{state['path']}: keys {params['state']}", diff=diff, data=data)
