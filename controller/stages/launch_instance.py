"""Launch the build machine with per-bake keys; remove it (and its temporaries) on the way out."""

from __future__ import annotations

import structlog

from kiln.controller.context import BakeContext

log = structlog.get_logger("kiln.stage")


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
        if ctx.keep_instance:
            ctx.provider.keep_build(ctx.machine_spec())  # its record now ends only at the deadline (or destroy)
            log.warning(
                "keeping the instance for debugging (--keep-on-error)", instance=ctx.instance.id, login=login_hint(ctx)
            )
            return
        ctx.provider.terminate(ctx.instance)
        log.info("instance removed", instance=ctx.instance.id)


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
