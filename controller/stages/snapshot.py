"""Capture the cleaned machine as the role's new version; drop it if the bake fails later."""

from __future__ import annotations

import structlog

from kiln.controller.context import BakeContext
from kiln.controller.model import Image, Publication
from kiln.controller.providers.base import ImageLeftToSweep

log = structlog.get_logger("kiln.stage")


class Snapshot:
    name = "snapshot"

    def run(self, ctx: BakeContext) -> None:
        ctx.provider.prepare_snapshot(ctx.instance)

        def own(image: Image) -> None:  # from the moment it exists: an interrupt from here on still removes it
            ctx.image = image

        try:
            ctx.image = ctx.provider.snapshot(ctx.image_spec(), on_created=own)
        except ImageLeftToSweep:
            ctx.image = None  # recorded for the next bake or sweep: not this bake's to remove now
            raise
        log.info("image", id=ctx.image.id, name=ctx.image.name, version=ctx.version)
        list_early = getattr(ctx.provider, "list_before_publish", None)
        if list_early is not None:
            list_early(ctx.role)  # while the image is tested: what publish decides from, made off its path

    def undo(self, ctx: BakeContext) -> None:
        if ctx.image is not None and not ctx.succeeded:
            ctx.provider.discard(ctx.image)
            log.info("unfinished image removed", image=ctx.image.name)


class Publish:
    """Distribute the image and move ``latest`` to it: the last step of a good bake."""

    name = "publish"

    def run(self, ctx: BakeContext) -> None:
        def hold(publication: Publication) -> None:  # before anything is made: its undo finds every copy
            ctx.publication = publication

        ctx.publication = ctx.provider.publish(ctx.publish_spec(), on_started=hold)
        log.info("published", copies=[f"{i.region or i.provider}:{i.id}" for i in ctx.published])

    def undo(self, ctx: BakeContext) -> None:
        if ctx.publication is not None and not ctx.succeeded:
            ctx.provider.unpublish(ctx.publication)
            ctx.publication = None


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
