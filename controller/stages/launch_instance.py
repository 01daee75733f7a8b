"""Launch the build machine with per-bake keys; remove it (and its temporaries) on the way out."""

from __future__ import annotations

import threading
from typing import Any

import structlog

from kiln.controller.context import BakeContext
from kiln.controller.model import Machine

log = structlog.get_logger("kiln.stage")


#: seconds the launch stage's undo waits for a removal begun early (the engine's own call is bounded at 120 s)
REMOVAL_WAIT_SECONDS = 150.0


class EarlyRemoval:
    """The build machine's removal, in a thread, while the bake's later stages run (:func:`remove_while_testing`)."""

    def __init__(self, provider: Any, machine: Machine) -> None:
        self.provider, self.machine = provider, machine
        self.failed = False
        self.thread = threading.Thread(target=self._remove, name="kiln-remove-build-machine", daemon=True)
        self.thread.start()

    def _remove(self) -> None:
        try:
            self.provider.terminate(self.machine)
        except Exception as exc:  # the launch stage's undo removes it, and says so if it cannot
            log.warning("removing the build machine early failed; removing it at the end", error=str(exc))
            self.failed = True

    def finished(self) -> bool:
        """Whether the machine is removed (waiting, bounded, for a removal under way)."""
        self.thread.join(REMOVAL_WAIT_SECONDS)
        return not self.thread.is_alive() and not self.failed


class LaunchInstance:
    name = "launch instance"

    def run(self, ctx: BakeContext) -> None:
        from kiln.controller.ssh import KeyPair  # paramiko and cryptography: loaded since the bake began (bake.py)

        ctx.client_key = KeyPair.generate(comment=f"kiln-build-{ctx.build_id}")
        ctx.host_key = KeyPair.generate(comment=f"kiln-host-{ctx.build_id}")
        # the machine, or nothing: a launch that fails or is interrupted removes what it made itself
        ctx.instance = ctx.provider.launch(ctx.machine_spec())
        log.info("instance", id=ctx.instance.id, ssh=f"{ctx.instance.ssh_host}:{ctx.instance.ssh_port}")

    def undo(self, ctx: BakeContext) -> None:
        if ctx.instance is None:
            return
        removal = _early_removal(ctx.instance)  # begun as the test stage began
        if removal is not None and removal.finished():
            log.info("instance removed", instance=ctx.instance.id)
            return
        if ctx.keep_instance:
            ctx.provider.keep_build(ctx.machine_spec())  # its record now ends only at the deadline (or destroy)
            log.warning(
                "keeping the instance for debugging (--keep-on-error)", instance=ctx.instance.id, login=login_hint(ctx)
            )
            return
        ctx.provider.terminate(ctx.instance)
        log.info("instance removed", instance=ctx.instance.id)


#: machine id -> its removal begun early (:func:`remove_while_testing`), for the launch stage's undo
_EARLY: dict[str, EarlyRemoval] = {}
_EARLY_LOCK = threading.Lock()


def remove_while_testing(ctx: BakeContext) -> None:
    """The build machine serves nothing once its snapshot is made: as the test stage begins, a provider that can
    (``removes_in_background``) removes it in a thread while the image is tested and published, and the launch
    stage's undo waits for that (bounded), or removes it itself. Kept as ever with --keep-on-error (a later stage
    may fail)."""
    if ctx.options.keep_on_error or not getattr(ctx.provider, "removes_in_background", False):
        return
    if ctx.session is not None:
        ctx.session.close()  # nothing runs on it any more (the connect stage's undo closes it again: harmless)
    log.info("removing the build machine while the image is tested and published", instance=ctx.instance.id)
    with _EARLY_LOCK:
        _EARLY[ctx.instance.id] = EarlyRemoval(ctx.provider, ctx.instance)


def _early_removal(machine: Machine) -> EarlyRemoval | None:
    with _EARLY_LOCK:
        return _EARLY.pop(machine.id, None)


def login_hint(ctx: BakeContext) -> str:
    inst = ctx.instance
    key_path = ctx.options.builds_dir / "keys" / f"{ctx.build_id}.key"
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_bytes(ctx.client_key.private_openssh)
    key_path.chmod(0o600)
    return (
        f"ssh -i {key_path} -p {inst.ssh_port} -o StrictHostKeyChecking=accept-new "
        f"{inst.ssh_user}@{inst.ssh_host}   (remove with: invoke destroy --build-id {ctx.build_id})"
    )
