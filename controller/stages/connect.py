"""Open the bake's one SSH connection, host key pinned."""

from __future__ import annotations

import structlog

from controller.context import BakeContext
from controller.ssh import Session

log = structlog.get_logger("kiln.stage")


class Connect:
    name = "connect"

    def __init__(self, timeout: float = 180.0) -> None:
        self.timeout = timeout

    def run(self, ctx: BakeContext) -> None:
        inst = ctx.instance
        ctx.host_key_expectation = ctx.provider.host_key_expectation(ctx)
        ctx.session = Session(inst.ssh_host, inst.ssh_port, inst.ssh_user, ctx.client_key, ctx.host_key_expectation)
        waited = ctx.session.wait_until_ready(self.timeout)
        log.info("connected", address=ctx.session.address, waited=round(waited, 2))

    def undo(self, ctx: BakeContext) -> None:
        if ctx.session is not None:
            ctx.session.close()
