"""Ansible's ``apt_repository``: add or remove a one-line APT source, writing the files as ansible-core does.

A new source goes to ``/etc/apt/sources.list.d/<filename>.list``, the file name made from the
repository's host and path as Ansible makes it (``deb http://deb.debian.org/debian bookworm-backports
main`` -> ``deb_debian_org_debian.list``), mode 0644 unless ``mode``. A source already present (even
commented out) is enabled where it is; ``state: absent`` removes every enabled copy, and a file left
empty is deleted. As ansible-core does, a change rewrites every source file it read, each line
normalised (single spaces, ``# `` before a disabled one), and refreshes the index (``update_cache``).
Launchpad ``ppa:`` sources are refused: they need Ubuntu and Launchpad's keys.

Example::

    - apt_repository: {repo: "deb http://deb.debian.org/debian bookworm-backports main", state: present}
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

from ..api import Context, ModuleError, Result, parse_mode

SOURCES_LIST = "/etc/apt/sources.list"
SOURCES_DIR = "/etc/apt/sources.list.d"
VALID_SOURCE_TYPES = ("deb", "deb-src")
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}

SCHEMA = {
    "description": "Ansible's apt_repository: add or remove a one-line APT source (files written as ansible-core does).",
    "args": {
        "repo": {"type": "str", "required": True, "description": "The source line, e.g. 'deb URL SUITE COMPONENT'."},
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present", "description": "Wanted."},
        "filename": {
            "type": "str",
            "description": "The sources.list.d file's name without .list (default: made from the URL).",
        },
        "mode": {"type": "mode", "description": "Mode of a new source file (default 0644)."},
        "update_cache": {
            "type": "bool",
            "default": True,
            "aliases": ["update-cache"],
            "description": "Run apt-get update after a change.",
        },
        "update_cache_retries": {"type": "int", "default": 5, "description": "Tries of the update."},
        "update_cache_retry_max_delay": {"type": "int", "default": 12, "description": "Most seconds between tries."},
        "codename": {"type": "str", "description": "Only for ppa: sources (refused here)."},
        "validate_certs": {"type": "bool", "default": True, "description": "Only for ppa: sources (refused here)."},
        "install_python_apt": {
            "type": "bool",
            "default": True,
            "description": "Ansible installs python3-apt to work; kiln needs nothing: ignored.",
        },
    },
    "check_mode": "full",
    "diff": True,
    "example": '- apt_repository: {repo: "deb http://deb.debian.org/debian bookworm-backports main"}',
}

Line = Tuple[bool, bool, str, str]  # (valid, enabled, source, comment)


def parse(line: str) -> Line:
    """One sources.list line as Ansible reads it."""
    enabled, comment = True, ""
    line = line.strip()
    if line.startswith("#"):
        enabled, line = False, line[1:]
    cut = line.find("#")
    if cut > 0:
        comment, line = line[cut + 1 :].strip(), line[:cut]
    source = line.strip()
    valid = False
    if source:
        chunks = source.split()
        if chunks[0] in VALID_SOURCE_TYPES:
            valid, source = True, " ".join(chunks)
    return valid, enabled, source, comment


def render(lines: List[Line]) -> str:
    return "".join(("" if enabled else "# ") + source + (f" # {comment}" if comment else "") + "\n"
                   for _, enabled, source, comment in lines)  # fmt: skip


def suggest_filename(source: str, filename: Optional[str]) -> str:
    """Ansible's name for a new source's file: host and path of the URL, non-alphanumerics as '_'."""
    if filename is None:
        line = re.sub(r"\[[^\]]+\]", "", source)
        line = re.sub(r"\w+://", "", line)
        parts = [part for part in line.split() if part not in VALID_SOURCE_TYPES]
        first = parts[0].split("@", 1)[-1] if parts else ""
        filename = "_".join(re.sub("[^a-zA-Z0-9]", " ", first).split())
    name = f"{filename}.list"
    return name if "/" in name else os.path.join(SOURCES_DIR, name)


def read_sources() -> Dict[str, List[Line]]:
    files: Dict[str, List[Line]] = {}
    for path in [SOURCES_LIST] + sorted(glob.glob(f"{SOURCES_DIR}/*.list")):
        if os.path.isfile(path):
            with open(path) as handle:
                files[path] = [parse(line) for line in handle]
    return files


def wanted_source(params: Dict[str, Any]) -> str:
    repo = params["repo"].strip()
    if not repo:
        raise ModuleError("Please set argument 'repo' to a non-empty value")
    if repo.startswith("ppa:"):
        raise ModuleError("apt_repository: ppa: sources are Ubuntu's (Launchpad); write the deb line and its key")
    valid, enabled, source, _ = parse(repo)
    if not valid or not enabled:
        raise ModuleError(f"Invalid repository string: {repo}")
    return source


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    wanted_source(params)
    return {"files": {path: [list(line) for line in lines] for path, lines in read_sources().items()}}


def edited(params: Dict[str, Any], files: Dict[str, List[Line]]) -> Tuple[Dict[str, List[Line]], List[str]]:
    """The source files after the change, and the files that are new."""
    source = wanted_source(params)
    after = {path: list(lines) for path, lines in files.items()}
    added: List[str] = []
    if params["state"] == "present":
        found = False
        for lines in after.values():
            for index, (valid, _, text, comment) in enumerate(lines):
                if valid and text == source:
                    lines[index], found = (True, True, text, comment), True
        if not found:
            path = suggest_filename(source, params.get("filename"))
            if path not in after:
                after[path] = []
                added.append(path)
            after[path].append((True, True, source, ""))
    else:
        for path, lines in after.items():
            after[path] = [line for line in lines if not (line[0] and line[1] and line[2] == source)]
    return after, added


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    files = {path: [tuple(line) for line in lines] for path, lines in state["files"].items()}
    after, added = edited(params, files)  # type: ignore[arg-type]
    before_text = {path: render(lines) for path, lines in files.items() if lines}
    after_text = {path: render(lines) for path, lines in after.items() if lines}
    data = {"repo": params["repo"], "state": params["state"]}
    if before_text == after_text:
        return Result(False, f"{params['repo']}: already {params['state']}", data=data)
    touched = sorted(set(before_text) ^ set(after_text)) or sorted(
        p for p in after_text if after_text[p] != before_text.get(p)
    )
    diff = {
        "before": "".join(before_text.get(p, "") for p in touched),
        "after": "".join(after_text.get(p, "") for p in touched),
    }
    data.update(
        sources_added=sorted(set(after_text) - set(before_text)),
        sources_removed=sorted(set(before_text) - set(after_text)),
    )
    msg = f"{params['repo']}: {params['state']} ({', '.join(touched)})"
    if ctx.check_mode:
        return Result(True, f"{msg} (check mode)", diff=diff, data=data)
    save(after, added, params.get("mode"))
    if params["update_cache"]:
        update(params, ctx)
    return Result(True, msg, diff=diff, data=data)


def save(files: Dict[str, List[Line]], added: List[str], mode: Optional[str]) -> None:
    """Every file rewritten (as Ansible's save does); an emptied one removed."""
    for path, lines in files.items():
        if not lines:
            if os.path.exists(path):
                os.remove(path)
            continue
        target = os.path.realpath(path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}-", dir=os.path.dirname(target))
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(render(lines))
            if os.path.exists(target):
                found = os.stat(target)
                os.chown(tmp, found.st_uid, found.st_gid)
                os.chmod(tmp, found.st_mode & 0o7777)
            else:
                os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        if path in added:
            os.chmod(target, parse_mode(mode, 0o644) if mode else 0o644)


def update(params: Dict[str, Any], ctx: Context) -> None:
    """apt-get update, tried again after 1, 2, 4... seconds (at most update_cache_retry_max_delay), as Ansible does."""
    done = None
    for attempt in range(params["update_cache_retries"]):
        done = ctx.run(["apt-get", "update", "-q"], check=False, env=APT_ENV, timeout=900)
        if done.rc == 0:
            return
        time.sleep(min(2**attempt, params["update_cache_retry_max_delay"]))
    reason = (done.stderr or done.stdout).strip() if done else "unknown reason"
    raise ModuleError(f"Failed to update apt cache after {params['update_cache_retries']} retries: {reason}")
