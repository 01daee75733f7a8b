"""Write the manifest entries, ``builds/images.json`` (for consumers) and the package inventory of a published bake."""

from __future__ import annotations

import datetime as dt

import structlog

from kiln.controller import manifest
from kiln.controller.context import BakeContext, inventory_bytes

log = structlog.get_logger("kiln.stage")


def inventories(ctx: BakeContext) -> dict[str, dict[str, str]]:
    """File name -> package inventory: ``<version>.json`` for x86_64 (or the only architecture),
    ``<version>.<arch>.json`` for each other one, so every image's packages-sha256 names its own file."""
    files = {f"{ctx.version}.json": ctx.packages}
    for variant in ctx.variants:
        if variant.arch not in ("", "x86_64"):
            files[f"{ctx.version}.{variant.arch}.json"] = variant.packages
    return files


class Record:
    name = "record"

    def run(self, ctx: BakeContext) -> None:
        ctx.finished = dt.datetime.now(dt.UTC)
        builds = ctx.options.builds_dir
        try:
            manifest.append(builds / "manifest.json", manifest.entries_for(ctx))
            manifest.record_images(builds / "images.json", ctx.published)
            for name, packages in inventories(ctx).items():
                inventory = builds / "packages" / ctx.role / name
                inventory.parent.mkdir(parents=True, exist_ok=True)
                inventory.write_bytes(inventory_bytes(packages))
        except OSError as exc:  # the image is published; a lost record must not undo it
            log.error("could not write the manifest", error=str(exc))

    def undo(self, ctx: BakeContext) -> None:
        """Nothing to undo."""
