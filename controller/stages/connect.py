"""Open the bake's one SSH connection, host key pinned; meanwhile, what needs no machine (:class:`WhileBooting`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

from kiln.controller.context import BakeContext

log = structlog.get_logger("kiln.stage")

T = TypeVar("T")

#: seconds a stage waits for work begun while its machine booted before it does that work itself
WHILE_BOOTING_WAIT_SECONDS = 60.0


class WhileBooting(Generic[T]):
    """Work that needs no machine (the agent's payload), done in a thread while the machine boots: the SSH wait is
    the engine's time, and the stage that needs the result then does not wait for it.

    It makes nothing outside the controller's memory (and kiln's cache), so an interrupted bake has nothing of it
    to undo."""

    def __init__(self, work: Callable[[], T]) -> None:
        self.work = work
        self.value: T | None = None
        self.failed = False
        self.context = structlog.contextvars.get_contextvars()
        self.thread = threading.Thread(target=self._run, name="kiln-while-booting", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        structlog.contextvars.bind_contextvars(**self.context)
        try:
            self.value = self.work()
        except Exception as exc:  # the stage does the work itself, and reports the error as its own
            log.debug("work while the machine booted failed; done again in its stage", error=str(exc))
            self.failed = True

    def result(self) -> T | None:
        """Its result; None when it failed or took longer than :data:`WHILE_BOOTING_WAIT_SECONDS` (the caller
        then does the work itself)."""
        self.thread.join(WHILE_BOOTING_WAIT_SECONDS)
        return None if self.thread.is_alive() or self.failed else self.value


class Connect:
    name = "connect"

    def __init__(self, while_booting: Callable[[BakeContext], None] | None = None) -> None:
        #: begins a later stage's work that needs no machine (the push stage's payload) before the SSH wait
        self.while_booting = while_booting

    def run(self, ctx: BakeContext) -> None:
        from kiln.controller.ssh import Keepalive, Session  # paramiko: loaded while the machine launched (bake.py)

        if self.while_booting is not None:
            self.while_booting(ctx)
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
