"""``publish.gitops``: a Terraform variables file in another git working tree, committed there.

The file (``*.auto.tfvars.json`` is loaded by Terraform on its own) holds one variable,
``kiln_images`` unless ``key`` names another, a ``map(map(string))``::

    {"kiln_images": {"web": {"version": "20261201.2", "us-east-1": "ami-0abc", "eu-west-1": "ami-0def",
                             "us-east-1/arm64": "ami-0123"}}}

x86_64 images are keyed by region, others by ``<region>/<arch>``. Each bake replaces its own
role's entry and keeps every other role and key; the write is atomic and serialised between
kiln processes on this machine. With ``commit: true`` kiln refuses a tree with uncommitted
changes (before writing anything) and commits only this file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from kiln.controller.consumers.common import DEFAULT_ARCH, ConsumerError, arch_of
from kiln.controller.model import Image
from kiln.controller.publish_settings import GitopsSetting

log = structlog.get_logger("kiln.consumers")

GIT_TIMEOUT = 60.0


@dataclass
class GitopsWrite:
    path: Path
    commit: str  # the commit made in the other tree; "" when not committing (or nothing changed)
    previous: str | None  # the file's content before, None if it did not exist


def target(setting: GitopsSetting, base_dir: Path) -> Path:
    """The file: ``path`` as given when absolute, else relative to ``base_dir`` (the playbooks dir's parent)."""
    path = Path(setting.path).expanduser()
    return path if path.is_absolute() else (Path(base_dir) / path).resolve()


def entry(version: str, images: list[Image]) -> dict[str, str]:
    """One role's value: its version and an image id per region (``<region>/<arch>`` beyond x86_64)."""
    value = {"version": version}
    for image in images:
        arch = arch_of(image)
        value[image.region if arch == DEFAULT_ARCH else f"{image.region}/{arch}"] = image.id
    return value


def problems_before_write(setting: GitopsSetting, base_dir: Path) -> list[str]:
    """Why the file could not be written (and committed); [] when it can. Nothing is changed."""
    path = target(setting, base_dir)
    if not path.parent.is_dir():
        return [f"gitops.path {setting.path}: directory {path.parent} does not exist"]
    if not setting.commit:
        return []
    top = _work_tree(path.parent)
    if not top:
        return [f"gitops.path {setting.path}: {path.parent} is not inside a git working tree (commit: true)"]
    dirty = _git(top, "status", "--porcelain").splitlines()
    if dirty:
        shown = "; ".join(line.strip() for line in dirty[:5]) + ("; ..." if len(dirty) > 5 else "")
        return [
            f"gitops: the working tree {top} has uncommitted changes ({shown}); kiln commits into a clean "
            "tree only: commit or stash them first"
        ]
    return []


def write(
    setting: GitopsSetting, base_dir: Path, role: str, version: str, images: list[Image], message: str = ""
) -> GitopsWrite:
    """Set ``role``'s entry to ``version``/``images`` and, with ``commit: true``, commit only this file."""
    path = target(setting, base_dir)
    with _serialised(path):
        problems = problems_before_write(setting, base_dir)
        if problems:
            raise ConsumerError("; ".join(problems))
        previous = path.read_text() if path.exists() else None
        document = _parse_existing(path, previous, setting.key)
        document.setdefault(setting.key, {})[role] = entry(version, images)
        _replace(path, json.dumps(document, indent=2, sort_keys=True) + "\n")
        log.info("git-ops file written", path=str(path), role=role, version=version)
        commit = _commit(path, message or f"kiln: {role} {version}") if setting.commit else ""
    return GitopsWrite(path=path, commit=commit, previous=previous)


def withdraw(setting: GitopsSetting, written: GitopsWrite, role: str, version: str) -> None:
    """Put the file back as it was (committing that too); what fails is said, not raised."""
    try:
        with _serialised(written.path):
            if written.previous is None:
                written.path.unlink(missing_ok=True)
            else:
                _replace(written.path, written.previous)
            if written.commit:
                _commit(written.path, f"kiln: withdraw {role} {version} (the bake failed)")
    except (OSError, ConsumerError) as exc:
        log.error("could not put the git-ops file back; fix by hand", path=str(written.path), error=str(exc))


def _parse_existing(path: Path, text: str | None, key: str) -> dict[str, Any]:
    if text is None or not text.strip():
        return {}
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConsumerError(f"{path} is not valid JSON ({exc}); kiln does not overwrite it") from exc
    if not isinstance(document, dict) or not isinstance(document.get(key, {}), dict):
        raise ConsumerError(f"{path}: expected an object with {key} an object of roles; kiln does not overwrite it")
    return document


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.kiln-tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def _serialised(path: Path) -> Iterator[None]:
    """One kiln process at a time per file; the lock lives outside the other tree, which must stay clean."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"kiln-gitops-{digest}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _work_tree(directory: Path) -> str:
    try:
        return _git(directory, "rev-parse", "--show-toplevel").strip()
    except ConsumerError:
        return ""


def _commit(path: Path, message: str) -> str:
    top = _git(path.parent, "rev-parse", "--show-toplevel").strip()
    relative = str(path.relative_to(Path(top).resolve()))
    if not _git(top, "status", "--porcelain", "--", relative).strip():
        log.info("git-ops file unchanged: nothing to commit", path=str(path))
        return ""
    _git(top, "add", "--", relative)
    identity = (
        []
        if _git(top, "config", "user.email", check=False).strip()
        else ["-c", "user.name=kiln", "-c", "user.email=kiln@localhost"]
    )
    _git(top, *identity, "commit", "--quiet", "-m", message, "--", relative)
    sha = _git(top, "rev-parse", "HEAD").strip()
    log.info("git-ops file committed", tree=top, file=relative, commit=sha[:12], message=message)
    return sha


def _git(directory: Path | str, *args: str, check: bool = True) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConsumerError(f"git {' '.join(args)} in {directory} failed: {exc}") from exc
    if check and proc.returncode:
        raise ConsumerError(f"git {' '.join(args)} in {directory} failed: {proc.stderr.strip() or proc.stdout}")
    return proc.stdout
