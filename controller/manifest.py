"""``builds/manifest.json``: one entry per artifact, appended under a file lock."""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from controller.context import BakeContext


@contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read(path: Path) -> list[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return []


def append(path: Path, entries: list[dict[str, Any]]) -> None:
    with locked(path):
        current = read(path)
        current.extend(entries)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(current, indent=2) + "\n")
        os.replace(tmp, path)


def entries_for(ctx: BakeContext) -> list[dict[str, Any]]:
    finished = ctx.finished.isoformat() if ctx.finished else ""
    common = {
        "role": ctx.role, "version": ctx.version, "provider": ctx.provider.name, "build_id": ctx.build_id,
        "base": {"id": ctx.base.id, "name": ctx.base.name} if ctx.base else None,
        "inputs_hash": ctx.inputs_hash, "started": ctx.started.isoformat(), "finished": finished,
        "steps": ctx.apply_counts.as_dict(), "checks": ctx.checks, "packages": len(ctx.packages),
        "timings": ctx.timings,
    }
    return [dict(common, region=image.region, image_id=image.id, image_name=image.name, status="published")
            for image in ctx.published]
