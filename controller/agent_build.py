"""Build the agent zipapp: the ``agent`` package plus pure-Python Jinja2/MarkupSafe."""

from __future__ import annotations

import functools
import hashlib
import io
import zipfile
from pathlib import Path

import jinja2
import markupsafe

import agent

ENTRY = "import sys\nfrom agent.__main__ import main\nsys.exit(main())\n"


def _package_files(package_dir: Path, arcname: str):
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        yield path, f"{arcname}/{path.relative_to(package_dir).as_posix()}"


@functools.lru_cache(maxsize=1)
def agent_zipapp() -> bytes:
    """The zipapp's bytes (deterministic: fixed timestamps, sorted entries)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)

        add("__main__.py", ENTRY.encode())
        for package in (agent, jinja2, markupsafe):
            root = Path(package.__file__).parent
            for path, name in _package_files(root, package.__name__):
                add(name, path.read_bytes())
    return buf.getvalue()


def agent_version() -> str:
    """A content hash of the agent: part of every image's inputs."""
    return hashlib.sha256(agent_zipapp()).hexdigest()[:16]
