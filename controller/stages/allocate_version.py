"""Reserve the next version of the role; give it back if nothing was published."""

from __future__ import annotations

import structlog

from kiln.controller.context import BakeContext
from kiln.controller.ownership import BuildClaim

log = structlog.get_logger("kiln.stage")


class AllocateVersion:
    name = "allocate version"

    def run(self, ctx: BakeContext) -> None:
        ctx.version = ctx.provider.allocate_version(ctx.role, BuildClaim.for_build(ctx.build_id, ctx.expires))
        log.info("version", role=ctx.role, version=ctx.version)

    def undo(self, ctx: BakeContext) -> None:
        if ctx.version and not ctx.published and not ctx.keep_instance:
            ctx.provider.release_version(ctx.role, ctx.version)
