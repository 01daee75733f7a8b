"""Resolve the role's base image to a concrete id; fold it into the inputs hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import structlog

from kiln.controller.context import BakeContext
from kiln.controller.model import Diagnostic, InvalidInput
from kiln.controller.providers.base import UnknownBase

log = structlog.get_logger("kiln.stage")


def inputs_hash(content_hash: str, base_id: str) -> str:
    return hashlib.sha256(f"{content_hash}\n{base_id}".encode()).hexdigest()[:32]


def resolve(ctx: BakeContext) -> None:
    """``ctx.base`` for ``ctx.arch``; a base that names nothing is invalid input (nothing is launched yet)."""
    spec = ctx.compiled.base.get(ctx.provider.name)
    try:
        ctx.base = ctx.provider.resolve_base(spec, arch=ctx.arch) if ctx.arch else ctx.provider.resolve_base(spec)
    except UnknownBase as exc:
        raise InvalidInput([base_diagnostic(ctx, exc)]) from exc
    ctx.inputs_hash = inputs_hash(ctx.compiled.content_hash, ctx.base.id)
    log.info(
        "base image",
        base=ctx.base.name,
        id=ctx.base.id,
        inputs_hash=ctx.inputs_hash,
        **({"arch": ctx.arch} if ctx.arch else {}),
    )


def base_diagnostic(ctx: BakeContext, exc: UnknownBase) -> Diagnostic:
    """The error pinned where a role file of the chain (the role's own first) writes the base's name."""
    roles = Path(ctx.options.playbooks_dir) / "roles"
    files = [
        roles / role / name
        for role in [ctx.role, *reversed(ctx.compiled.chain)]
        for name in ("role.yml", "meta/main.yml")
    ]
    for path in dict.fromkeys(files):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for number, line in enumerate(lines, 1):
            if exc.written and exc.written in line:
                return Diagnostic(str(path), number, line.index(exc.written) + 1, str(exc), line)
    return Diagnostic(str(roles / ctx.role / "role.yml"), 1, 1, str(exc))


class ResolveBase:
    name = "resolve base image"

    def run(self, ctx: BakeContext) -> None:
        resolve(ctx)

    def undo(self, ctx: BakeContext) -> None:
        """Nothing was created."""
