"""kiln's own cache of the agent (its zipapp and the controller-compiled byte code): whole or absent, and bounded."""

from __future__ import annotations

import hashlib
import os

from kiln.controller.agent_build import CACHE_KEEP, store_whole


def test_the_agent_cache_keeps_the_newest_versions_whole_and_drops_the_oldest(tmp_path):
    directory = tmp_path / "agent"
    for version in range(CACHE_KEEP):  # twice the versions the cache keeps: each is two files
        data = f"agent {version}".encode()
        path = directory / f"compiled-{version:04d}.zip"
        store_whole(path, data, path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest())
        os.utime(path, (version, version))  # the order they were written in, whatever the clock's resolution
        os.utime(path.with_suffix(".sha256"), (version, version))
    kept = sorted(p.name for p in directory.iterdir())
    assert len(kept) == CACHE_KEEP, kept
    newest = directory / f"compiled-{CACHE_KEEP - 1:04d}.zip"
    assert newest.read_bytes() == f"agent {CACHE_KEEP - 1}".encode()
    assert newest.with_suffix(".sha256").read_text() == hashlib.sha256(newest.read_bytes()).hexdigest()
    assert not (directory / "compiled-0000.zip").exists(), "the oldest version was kept"
    assert not [p for p in directory.iterdir() if p.name.startswith(".")], "a temporary file was left"
