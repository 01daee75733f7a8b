"""``builds/manifest.json``: one entry per artifact, appended under a file lock.

``builds/images.json``, for consumers: role -> version -> region -> architecture -> image id
(region ``local`` for the local engine's images), merged under the same kind of lock, so
concurrent bakes never drop each other's entries.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from kiln.controller.context import BakeContext
from kiln.controller.model import Image

LOCAL_REGION = "local"
DEFAULT_ARCH = "x86_64"


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
        _replace(path, current)


def _replace(path: Path, document: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=isinstance(document, dict)) + "\n")
    os.replace(tmp, path)


def read_images(path: Path) -> dict[str, Any]:
    """``builds/images.json`` as a mapping ({} when there is none yet)."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return document if isinstance(document, dict) else {}


def record_images(path: Path, images: list[Image]) -> None:
    """Merge ``images`` into ``builds/images.json``; every other role, version, region and arch is kept."""
    with locked(path):
        document = read_images(path)
        for image in images:
            regions = document.setdefault(image.role, {}).setdefault(image.version, {})
            arches = regions.setdefault(image.region or LOCAL_REGION, {})
            arches[image.arch or DEFAULT_ARCH] = image.id
        _replace(path, document)


def entries_for(ctx: BakeContext) -> list[dict[str, Any]]:
    finished = ctx.finished.isoformat() if ctx.finished else ""
    common = {
        "role": ctx.role,
        "version": ctx.version,
        "provider": ctx.provider.name,
        "build_id": ctx.build_id,
        "base": {"id": ctx.base.id, "name": ctx.base.name} if ctx.base else None,
        "inputs_hash": ctx.inputs_hash,
        "started": ctx.started.isoformat(),
        "finished": finished,
        "steps": ctx.apply_counts.as_dict(),
        "checks": ctx.checks,
        "packages": len(ctx.packages),
        "timings": ctx.timings,
    }
    return [
        dict(
            common,
            region=image.region,
            image_id=image.id,
            image_name=image.name,
            status="published",
            **of_architecture(ctx, image),
        )
        for image in ctx.published
    ]


def of_architecture(ctx: BakeContext, image: Image) -> dict[str, Any]:
    """An image of a bake of several architectures: its arch, and its own base, inputs hash and counts."""
    arch = image.arch
    variant = next((v for v in ctx.variants if v.arch == arch), None)
    if variant is None:
        return {"arch": arch} if arch else {}
    return {
        "arch": arch,
        "base": {"id": variant.base.id, "name": variant.base.name} if variant.base else None,
        "inputs_hash": variant.inputs_hash,
        "steps": variant.apply_counts.as_dict(),
        "checks": variant.checks,
        "packages": len(variant.packages),
    }
