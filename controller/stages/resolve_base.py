"""Resolve the role's base image to a concrete id; fold it into the inputs hash."""

from __future__ import annotations

import hashlib

import structlog

from controller.context import BakeContext

log = structlog.get_logger("kiln.stage")


def inputs_hash(content_hash: str, base_id: str) -> str:
    return hashlib.sha256(f"{content_hash}\n{base_id}".encode()).hexdigest()[:32]


class ResolveBase:
    name = "resolve base image"

    def run(self, ctx: BakeContext) -> None:
        spec = ctx.compiled.base.get(ctx.provider.name)
        ctx.base = ctx.provider.resolve_base(spec)
        ctx.inputs_hash = inputs_hash(ctx.compiled.content_hash, ctx.base.id)
        log.info("base image", base=ctx.base.name, id=ctx.base.id, inputs_hash=ctx.inputs_hash)

    def undo(self, ctx: BakeContext) -> None:
        """Nothing was created."""
