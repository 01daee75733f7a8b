"""Check out a git repository at a given branch, tag or commit (needs git on the box).

The checkout's HEAD is compared with what ``version`` resolves to; it is cloned or
moved only when they differ. Local modifications stop it unless ``force``.

Example::

    - git: {repo: "https://github.com/example/site.git", dest: /srv/site, version: v1.2.0}
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Optional

from ..api import Context, ModuleError, Result, require_command

SCHEMA = {
    "description": "Clone a git repository and check out a branch, tag or commit; needs git on the box.",
    "args": {
        "repo": {"type": "str", "required": True, "aliases": ["url"], "description": "Repository URL or path."},
        "dest": {"type": "path", "required": True, "description": "Checkout directory."},
        "version": {
            "type": "str",
            "default": "HEAD",
            "description": "Branch, tag or full commit sha (HEAD: the remote's default branch).",
        },
        "depth": {"type": "int", "description": "Shallow clone with this many commits."},
        "force": {"type": "bool", "default": False, "description": "Discard local modifications."},
        "update": {
            "type": "bool",
            "default": True,
            "description": "false: clone when missing, never move an existing checkout.",
        },
        "accept_hostkey": {
            "type": "bool",
            "default": False,
            "description": "Trust an ssh remote's host key unchecked (ssh -o StrictHostKeyChecking=no).",
        },
        "accept_newhostkey": {
            "type": "bool",
            "default": False,
            "description": "Trust an ssh remote's host key when none is known yet, refuse a changed one "
            "(StrictHostKeyChecking=accept-new).",
        },
    },
    "mutually_exclusive": [["accept_hostkey", "accept_newhostkey"]],
    "check_mode": "full",
    "diff": True,
    "example": '- git: {repo: "https://github.com/example/site.git", dest: /srv/site, version: main}',
}

SHA = re.compile(r"^[0-9a-f]{40}$")


def _git(ctx: Context) -> str:
    return require_command("git", "install it first: - package: git")


def ssh_environment(params: Dict[str, Any], ctx: Context) -> Dict[str, str]:
    """GIT_SSH_COMMAND as Ansible's git builds it on the one the step's environment gives: the host key policy
    asked for, and BatchMode so that ssh never waits on a prompt nobody can answer."""
    options = ""
    if params.get("accept_hostkey"):
        options += " -o StrictHostKeyChecking=no"
    elif params.get("accept_newhostkey"):
        options += " -o StrictHostKeyChecking=accept-new"
    options += " -o BatchMode=yes"
    given = dict(os.environ, **ctx.environment)
    command = given.get("GIT_SSH", given.get("GIT_SSH_COMMAND", "ssh"))
    return {"GIT_SSH_COMMAND": command + options}


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    git = _git(ctx)
    dest = params["dest"]
    if not os.path.exists(dest):
        return {"head": None}
    if not os.path.isdir(os.path.join(dest, ".git")):
        if os.listdir(dest):
            raise ModuleError(f"{dest} exists and is not a git checkout")
        return {"head": None}
    head = ctx.run([git, "-C", dest, "rev-parse", "HEAD"], check=False).stdout.strip() or None
    dirty = bool(
        ctx.run([git, "-C", dest, "status", "--porcelain", "--untracked-files=no"], check=False).stdout.strip()
    )
    return {"head": head, "dirty": dirty}


def remote_sha(git: str, params: Dict[str, Any], ctx: Context) -> Optional[str]:
    """What ``version`` is on the remote, read with ls-remote (no clone)."""
    version = params["version"]
    if SHA.match(version):
        return version
    refs = (
        [version]
        if version == "HEAD"
        else [f"refs/heads/{version}", f"refs/tags/{version}", f"refs/tags/{version}^{{}}"]
    )
    done = ctx.run([git, "ls-remote", params["repo"], *refs], timeout=300, env=ssh_environment(params, ctx))
    found = {}
    for line in done.stdout.splitlines():
        sha, _, ref = line.partition("\t")
        found[ref] = sha
    for ref in (f"refs/tags/{version}^{{}}", f"refs/tags/{version}", f"refs/heads/{version}", "HEAD"):
        if ref in found and (ref != "HEAD" or version == "HEAD"):
            return found[ref]
    return None


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    git = _git(ctx)
    dest, version = params["dest"], params["version"]
    head = state["head"]
    if head is not None and not params["update"]:
        return Result(False, f"{dest} is at {head[:12]} (update: false)", data={"before": head, "after": head})
    want = remote_sha(git, params, ctx)
    if want is None:
        raise ModuleError(f"version {version!r} not found in {params['repo']}")
    if head == want:
        return Result(False, f"{dest} is at {head[:12]}", data={"before": head, "after": head})
    if head is not None and state.get("dirty") and not params["force"]:
        raise ModuleError(f"{dest} has local modifications (set force: true to discard them)")
    diff = {"before": head or "absent", "after": want}
    msg = (
        f"cloned {params['repo']} at {version} ({want[:12]})"
        if head is None
        else f"{dest}: {head[:12]} -> {want[:12]} ({version})"
    )
    if ctx.check_mode:
        return Result(True, f"{msg} (check mode)", diff=diff)
    depth = ["--depth", str(params["depth"])] if params.get("depth") else []
    remote_env = ssh_environment(params, ctx)
    if head is None:
        os.makedirs(os.path.dirname(dest.rstrip("/")) or "/", exist_ok=True)
        branch = ["--branch", version] if version != "HEAD" and not SHA.match(version) else []
        ctx.run([git, "clone", *depth, *branch, params["repo"], dest], timeout=1800, env=remote_env)
    else:
        fetch_ref = [want] if SHA.match(version) else ([version] if version != "HEAD" else [])
        ctx.run([git, "-C", dest, "fetch", *depth, "--tags", "origin", *fetch_ref], timeout=1800, env=remote_env)
    if SHA.match(version) and head is None:
        ctx.run([git, "-C", dest, "fetch", *depth, "origin", want], timeout=1800, check=False, env=remote_env)
    ctx.run([git, "-C", dest, "checkout", *(["--force"] if params["force"] else []), "--detach", want])
    now = ctx.run([git, "-C", dest, "rev-parse", "HEAD"]).stdout.strip()
    return Result(True, msg, diff={"before": head or "absent", "after": now}, data={"before": head, "after": now})
