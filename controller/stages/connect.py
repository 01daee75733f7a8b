"""Open the bake's one SSH connection, host key pinned."""

from __future__ import annotations

import structlog

from kiln.controller.context import BakeContext

log = structlog.get_logger("kiln.stage")


class Connect:
    name = "connect"

    def run(self, ctx: BakeContext) -> None:
        from kiln.controller.ssh import Keepalive, Session  # paramiko: loaded while the machine launched (bake.py)

        inst = ctx.instance
        ctx.host_key_expectation = ctx.provider.host_key_expectation(ctx.instance)
        keepalive = Keepalive(ctx.options.ssh_keepalive, ctx.options.ssh_keepalive_misses)
        ctx.session = Session(
            inst.ssh_host, inst.ssh_port, inst.ssh_user, ctx.client_key, ctx.host_key_expectation, keepalive=keepalive
        )
        waited = ctx.session.wait_until_ready(ctx.options.ssh_timeout)
        log.info(
            "connected",
            address=ctx.session.address,
            waited=round(waited, 2),
            handshake=round(ctx.session.handshake_seconds, 3),
        )

    def undo(self, ctx: BakeContext) -> None:
        if ctx.session is not None:
            ctx.session.close()
