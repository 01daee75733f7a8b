"""Capture the cleaned machine as the role's new version; drop it if the bake fails later."""

from __future__ import annotations

import structlog

from controller.context import BakeContext

log = structlog.get_logger("kiln.stage")


class Snapshot:
    name = "snapshot"

    def run(self, ctx: BakeContext) -> None:
        ctx.provider.prepare_snapshot(ctx)
        ctx.image = ctx.provider.snapshot(ctx)
        log.info("image", id=ctx.image.id, name=ctx.image.name, version=ctx.version)

    def undo(self, ctx: BakeContext) -> None:
        if ctx.image is not None and not ctx.succeeded:
            ctx.provider.discard(ctx, ctx.image)
            log.info("unfinished image removed", image=ctx.image.name)


class Publish:
    """Distribute the image and move ``latest`` to it: the last step of a good bake."""

    name = "publish"

    def run(self, ctx: BakeContext) -> None:
        ctx.published = ctx.provider.publish(ctx, ctx.image)
        log.info("published", copies=[f"{i.region or i.provider}:{i.id}" for i in ctx.published])

    def undo(self, ctx: BakeContext) -> None:
        if ctx.published and not ctx.succeeded:
            ctx.provider.unpublish(ctx, ctx.published)
            ctx.published = []


class Retire:
    """Keep the newest N versions; failures here are reported, never fatal."""

    name = "retire old versions"

    def __init__(self, keep: int) -> None:
        self.keep = keep

    def run(self, ctx: BakeContext) -> None:
        try:
            ctx.retired = ctx.provider.retire(ctx.role, self.keep)
        except Exception as exc:
            log.warning("retiring old versions failed; will retry next bake", error=str(exc))
            return
        if ctx.retired:
            log.info("retired", versions=[i.version for i in ctx.retired])

    def undo(self, ctx: BakeContext) -> None:
        """Retired versions are gone for good; retire runs only after a good publish."""
