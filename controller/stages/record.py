"""Write the manifest entries, ``builds/images.json`` (for consumers) and the package inventory of a published bake."""

from __future__ import annotations

import datetime as dt

import structlog

from controller import manifest
from controller.context import BakeContext, inventory_bytes

log = structlog.get_logger("kiln.stage")


class Record:
    name = "record"

    def run(self, ctx: BakeContext) -> None:
        ctx.finished = dt.datetime.now(dt.UTC)
        builds = ctx.options.builds_dir
        try:
            manifest.append(builds / "manifest.json", manifest.entries_for(ctx))
            manifest.record_images(builds / "images.json", ctx.published)
            inventory = builds / "packages" / ctx.role / f"{ctx.version}.json"
            inventory.parent.mkdir(parents=True, exist_ok=True)
            inventory.write_bytes(inventory_bytes(ctx.packages))
        except OSError as exc:  # the image is published; a lost record must not undo it
            log.error("could not write the manifest", error=str(exc))

    def undo(self, ctx: BakeContext) -> None:
        """Nothing to undo."""
