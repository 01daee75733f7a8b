"""Compile once per inputs: a role compiled before, with the same inputs, is read back, not compiled.

An entry is keyed by what the command asks for (role, provider, ``--var``, tags, check and
diff), the bytes of kiln.yaml and a fingerprint of kiln's own code; it holds the compiled
role, the loaded config, and what the compile read: every file, link and directory listing
of the roles in the chain. It is used only while all of those are as they were (a file
whose size or mtime moved is hashed again: touched but unchanged still counts as the
same). A compile that fails is never stored: errors are reported every time; nor is one whose
role uses secrets (``no_log`` values): nothing under builds/ may hold them.

This module imports nothing heavy: a command whose role did not change never loads the
YAML parser, the validators or Jinja2.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMAT = 1
#: A file modified this close to the compile (nanoseconds) is not trusted to have been read whole.
SETTLE_NS = 50_000_000
CODE_DIRS = ("controller", "agent")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """kiln's own code as it is on disk (path, size, mtime of each module): compiling depends on it."""
    root = Path(__file__).resolve().parent.parent.parent
    digest = hashlib.sha256(str(FORMAT).encode())
    for top in CODE_DIRS:
        for folder, dirs, files in os.walk(root / top):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith(".py"):
                    stat = os.stat(os.path.join(folder, name))
                    digest.update(f"{folder}/{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _file_sha(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def snapshot(role_dirs: list[Path]) -> dict[str, list[Any]]:
    """What a compile of these roles read: each entry's kind, its stat, and its content (hash)."""
    seen: dict[str, list[Any]] = {}
    for role_dir in role_dirs:
        _walk(str(role_dir), seen, previous=None)
    return seen


def unchanged(previous: dict[str, list[Any]], role_dirs: list[Path]) -> bool:
    """Whether the roles read as they did when ``previous`` was taken (hashing only what moved)."""
    seen: dict[str, list[Any]] = {}
    try:
        for role_dir in role_dirs:
            _walk(str(role_dir), seen, previous)
    except OSError:
        return False
    return seen == previous


def _walk(top: str, seen: dict[str, list[Any]], previous: dict[str, list[Any]] | None) -> None:
    if not os.path.isdir(top):
        seen[top] = ["missing"]
        return
    for folder, dirs, files in os.walk(top):
        dirs.sort()
        seen[folder] = ["dir", sorted(dirs + files)]
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                seen[path + "@"] = ["link", os.readlink(path)]
            if os.path.isdir(path):
                continue
            try:
                stat = os.stat(path)
            except OSError:
                seen[path] = ["broken"]
                continue
            key = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
            before = (previous or {}).get(path)
            if before is not None and before[0] == "file" and before[1] == key:
                seen[path] = before
            else:
                seen[path] = ["file", key, _file_sha(path)]
    # a file whose stat moved but whose content did not is the same input
    for path, entry in list(seen.items()):
        before = (previous or {}).get(path)
        if entry[0] == "file" and before is not None and before[0] == "file" and before[2] == entry[2]:
            seen[path] = before


def entry_key(role: str, provider: str, config_bytes: bytes, request: dict[str, Any]) -> str:
    digest = hashlib.sha256(code_fingerprint().encode())
    digest.update(json.dumps([role, provider, request], sort_keys=True, default=str).encode())
    digest.update(b"\0kiln.yaml\0" + config_bytes)
    return digest.hexdigest()[:40]


class CompileCache:
    """Compiled roles under ``directory`` (one small pickle per inputs); safe to delete at any time."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.pickle"

    def load(self, key: str, roles_dir: Path) -> tuple[Any, Any] | None:
        """(config summary, compiled role) stored under ``key`` if every file it read is unchanged; else None."""
        try:
            with open(self._path(key), "rb") as handle:
                entry = pickle.load(handle)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError):
            return None
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            return None
        dirs = [Path(roles_dir) / name for name in entry["chain"]]
        if not unchanged(entry["read"], dirs):
            return None
        return entry["config"], entry["compiled"]

    def store(self, key: str, roles_dir: Path, config: Any, compiled: Any, read: dict[str, list[Any]]) -> None:
        entry = {"format": FORMAT, "chain": list(compiled.chain), "read": read, "config": config, "compiled": compiled}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self._path(f".{key}.{os.getpid()}.{threading.get_ident()}")  # concurrent bakes (nightly)
            with open(tmp, "wb") as handle:
                pickle.dump(entry, handle, protocol=pickle.HIGHEST_PROTOCOL)
            tmp.replace(self._path(key))
        except (OSError, pickle.PicklingError, TypeError, AttributeError):
            pass  # no entry: the next command compiles again


def compile_cached(
    cache: CompileCache,
    playbooks_dir: Path,
    role: str,
    provider: str,
    overrides: dict[str, Any],
    tags: list[str] | None,
    skip_tags: list[str] | None,
    check_mode: bool,
    diff: bool,
    summarize: Callable[[Any], Any],
    config: Any = None,
) -> tuple[Any, Any, bool]:
    """(``summarize(config)``, compiled role, whether it came from the cache); raises InvalidInput as
    compile_role does. The summary is what the caller needs of kiln.yaml, in plain values: the
    loaded config itself is not kept (reading it back would load the YAML parser). ``config``: kiln.yaml
    as the caller already loaded it (a bake), used on a miss instead of loading it again."""
    config_path = Path(playbooks_dir) / "kiln.yaml"
    try:
        config_bytes = config_path.read_bytes()
    except OSError:
        config_bytes = b"<absent>"
    request = {"vars": overrides, "tags": tags, "skip_tags": skip_tags, "check": check_mode, "diff": diff}
    key = entry_key(role, provider, config_bytes, request)
    roles_dir = Path(playbooks_dir) / "roles"
    found = cache.load(key, roles_dir)
    if found is not None:
        return found[0], found[1], True
    from kiln.controller.config import load_config
    from kiln.controller.stepfiles.compile import compile_role

    config = config if config is not None else load_config(config_path)
    started = time.time_ns()
    compiled = compile_role(
        playbooks_dir,
        role,
        provider,
        config,
        overrides=overrides,
        tags=tags,
        skip_tags=skip_tags,
        check_mode=check_mode,
        diff=diff,
    )
    read = snapshot([roles_dir / name for name in compiled.chain])
    # a file written while (or just before) it was compiled may have been read half-way: compile again next
    # time; a role that uses secrets (no_log) is never written to disk: they stay out of builds/
    settled = not any(entry[0] == "file" and entry[1][1] >= started - SETTLE_NS for entry in read.values())
    if settled and not getattr(compiled, "no_log_values", None):
        cache.store(key, roles_dir, summarize(config), compiled, read)
    return summarize(config), compiled, False
