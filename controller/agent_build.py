"""Build the agent zipapp: the ``agent`` package plus pure-Python Jinja2/MarkupSafe.

Building it reads and deflates some 90 files; the result is kept in kiln's cache
directory under a fingerprint of its sources (path, size, mtime of each), so a
command whose agent did not change neither rebuilds nor re-hashes it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
import zipfile
from pathlib import Path

ENTRY = "import sys\nfrom agent.__main__ import main\nsys.exit(main())\n"
#: the zipapp's top-level packages and where they are found (the agent ships as kiln.agent, runs as agent)
PACKAGES = {"agent": "kiln.agent", "jinja2": "jinja2", "markupsafe": "markupsafe"}


def cache_dir() -> Path:
    """kiln's own cache: ``KILN_CACHE_DIR``, else ``$XDG_CACHE_HOME/kiln``, else ``~/.cache/kiln``."""
    if os.environ.get("KILN_CACHE_DIR"):
        return Path(os.environ["KILN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kiln"


def _package_root(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # finds without importing (Jinja2 stays off the controller's path)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the agent needs the package {name}, which is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _package_files(package_dir: Path, arcname: str):
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        yield path, f"{arcname}/{path.relative_to(package_dir).as_posix()}"


def _sources() -> list[tuple[Path, str]]:
    return [entry for arcname, name in PACKAGES.items() for entry in _package_files(_package_root(name), arcname)]


@functools.lru_cache(maxsize=1)
def _fingerprint() -> str:
    digest = hashlib.sha256(ENTRY.encode())
    for path, name in _sources():
        stat = path.stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _build() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:

        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)

        add("__main__.py", ENTRY.encode())
        for path, name in _sources():
            add(name, path.read_bytes())
    return buf.getvalue()


def _stored(name: str) -> Path:
    return (cache_dir() / "agent" / _fingerprint()).with_suffix(name)


def _store(data: bytes, sha: str) -> None:
    store_whole(_stored(".pyz"), data, _stored(".sha256"), sha)


#: cached files kept in ``cache_dir()/agent`` (an agent version is two: its bytes and their sha256)
CACHE_KEEP = 12


def store_whole(path: Path, data: bytes, checksum_path: Path, checksum: str) -> None:
    """``data`` at ``path``, then its checksum (last: it says the data is whole); older versions beyond
    the newest :data:`CACHE_KEEP` files go. No cache (a read-only home) only means building it again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for target, content in ((path, data), (checksum_path, checksum.encode())):
            tmp = target.with_name(f".{target.name}.{os.getpid()}")
            tmp.write_bytes(content)
            tmp.replace(target)
        _prune(path.parent)
    except OSError:
        pass


def _prune(directory: Path) -> None:
    files = sorted((p for p in directory.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
    for old in files[:-CACHE_KEEP]:
        old.unlink(missing_ok=True)


@functools.lru_cache(maxsize=1)
def _cached() -> tuple[bytes | None, str]:
    """(the zipapp's bytes when they had to be built, its sha256), from the cache when it is there."""
    try:
        return None, _stored(".sha256").read_text().strip()
    except OSError:
        pass
    data = _build()
    sha = hashlib.sha256(data).hexdigest()
    _store(data, sha)
    return data, sha


@functools.lru_cache(maxsize=1)
def agent_zipapp() -> bytes:
    """The zipapp's bytes (deterministic: fixed timestamps, sorted entries)."""
    data, sha = _cached()
    if data is not None:
        return data
    try:
        cached = _stored(".pyz").read_bytes()
    except OSError:
        cached = b""
    if hashlib.sha256(cached).hexdigest() == sha:
        return cached
    data = _build()  # the cache was damaged: rebuild it, and say the sha256 of what is sent
    _store(data, hashlib.sha256(data).hexdigest())
    _cached.cache_clear()
    return data


def agent_sha256() -> str:
    """The zipapp's sha256: what the box's copy must match before it runs."""
    return _cached()[1]


def agent_version() -> str:
    """A content hash of the agent: part of every image's inputs."""
    return agent_sha256()[:16]
