"""The developer loop (Molecule's, faster): converge, verify, login, destroy on a kept instance.

The kept instance is an ordinary build machine of the local provider that is not
removed at the end; its keys and address live in ``builds/dev/<role>.json``, so
each ``converge`` reconnects (host key still pinned) and applies only what differs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import structlog

from controller.bake import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    compile_for_bake,
    make_provider,
    new_build_id,
    with_build_settings,
)
from controller.config import load_config
from controller.context import BakeContext, BakeOptions
from controller.model import Instance, InvalidInput
from controller.pipeline import run_stages
from controller.ssh import KeyPair
from controller.stages.apply_steps import ApplySteps
from controller.stages.connect import Connect
from controller.stages.push_bundle import PushBundle
from controller.stages.resolve_base import ResolveBase
from controller.stages.verify import Verify

log = structlog.get_logger("kiln.dev")

DEV_VERSION = "dev"
KEPT_MACHINE_PREFIXES = ("kiln-build-", "kiln-sandbox-")


def state_path(builds: Path, role: str) -> Path:
    return builds / "dev" / f"{role}.json"


class AttachDevInstance:
    """Reuse the role's kept instance, or launch one and keep it (no undo)."""

    name = "attach dev instance"

    def run(self, ctx: BakeContext) -> None:
        path = state_path(ctx.options.builds_dir, ctx.role)
        if path.exists():
            saved = json.loads(path.read_text())
            engine = getattr(ctx.provider, "engine", None)
            if engine is None or engine.container_exists(saved["instance"]["id"]):
                ctx.instance = Instance(**saved["instance"])
                ctx.client_key = KeyPair(saved["client_key"].encode(), saved["client_pub"])
                ctx.host_key = KeyPair(b"", saved["host_pub"])
                log.info("reusing dev instance", instance=ctx.instance.id)
                return
            path.unlink()
        ctx.client_key = KeyPair.generate(comment=f"kiln-build-{ctx.build_id}")
        ctx.host_key = KeyPair.generate(comment=f"kiln-host-{ctx.build_id}")
        try:
            ctx.provider.launch(ctx)
        except BaseException:
            if ctx.instance is not None:
                ctx.provider.terminate(ctx, ctx.instance)
            raise
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "instance": asdict(ctx.instance),
                    "client_key": ctx.client_key.private_openssh.decode(),
                    "client_pub": ctx.client_key.public_openssh,
                    "host_pub": ctx.host_key.public_openssh,
                }
            )
        )
        path.chmod(0o600)
        log.info("dev instance launched", instance=ctx.instance.id)

    def undo(self, ctx: BakeContext) -> None:
        """Kept on purpose: `invoke destroy` removes it."""


def _context(
    role: str, options: BakeOptions, overrides: dict, tags: list[str] | None, skip_tags: list[str] | None
) -> BakeContext:
    config = load_config(options.playbooks_dir / "kiln.yaml")
    options = with_build_settings(options, config)
    compiled = compile_for_bake(role, "local", config, options, overrides, tags, skip_tags)
    provider = make_provider("local", config, options.builds_dir)
    ctx = BakeContext(role=role, compiled=compiled, provider=provider, options=options, build_id=new_build_id())
    ctx.version = DEV_VERSION
    return ctx


def converge(
    role: str,
    options: BakeOptions,
    overrides: dict | None = None,
    tags: list[str] | None = None,
    skip_tags: list[str] | None = None,
    verify: bool = False,
) -> int:
    try:
        ctx = _context(role, options, overrides or {}, tags, skip_tags)
    except InvalidInput as exc:
        print(exc.render())
        return EXIT_INVALID
    stages = [ResolveBase(), AttachDevInstance(), Connect(), PushBundle()]
    stages += [Verify()] if verify else [ApplySteps()]
    try:
        run_stages(stages, ctx)
    except BaseException as exc:  # noqa: B036 - reported through the exit code
        log.error("failed", stage=ctx.current_stage, error=str(exc))
        return EXIT_FAILED
    if not verify:
        c = ctx.apply_counts
        log.info("converged", ok=c.ok, changed=c.changed, skipped=c.skipped, seconds=ctx.timings.get("apply steps"))
    return EXIT_OK


def login_argv(role: str, builds: Path) -> list[str]:
    path = state_path(builds, role)
    if not path.exists():
        raise FileNotFoundError(f"no dev instance for {role}: run `invoke converge --role {role}` first")
    saved = json.loads(path.read_text())
    key = path.with_suffix(".key")
    key.write_text(saved["client_key"])
    key.chmod(0o600)
    inst = saved["instance"]
    known = path.with_suffix(".known_hosts")
    key_type, key_b64 = saved["host_pub"].split()[:2]
    known.write_text(f"[{inst['ssh_host']}]:{inst['ssh_port']} {key_type} {key_b64}\n")
    return [
        "ssh",
        "-i",
        str(key),
        "-p",
        str(inst["ssh_port"]),
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "IdentitiesOnly=yes",
        f"{inst['ssh_user']}@{inst['ssh_host']}",
    ]


def destroy(role: str | None, builds: Path, build_id: str | None = None) -> list[str]:
    """Remove kept dev instances (one role, or all) and --keep-on-error leftovers of ``build_id``."""
    from controller.engine import Engine

    engine = Engine()
    removed = []
    dev = builds / "dev"
    for path in sorted(dev.glob("*.json")) if dev.exists() else []:
        if role and path.stem != role:
            continue
        saved = json.loads(path.read_text())
        engine.remove_container(saved["instance"]["id"])
        removed.append(saved["instance"]["id"])
        for suffix in (".json", ".key", ".known_hosts"):
            path.with_suffix(suffix).unlink(missing_ok=True)
    if build_id:
        from controller.providers.local import LocalProvider

        removed += LocalProvider(engine=engine).destroy_build(build_id)
        # a sandbox build's machines have no local record; images made from a build inherit its
        # kiln.build-id label, so only kiln's own machine names are taken, never a workload
        for row in engine.containers(f"kiln.build-id={build_id}"):
            name = (row.get("Names") or [""])[0]
            if name.startswith(KEPT_MACHINE_PREFIXES):
                engine.remove_container(row["Id"])
                removed.append(name)
        key = builds / "keys" / f"{build_id}.key"
        key.unlink(missing_ok=True)
    return removed


def exec_login(role: str, builds: Path) -> None:
    argv = login_argv(role, builds)
    os.execvp(argv[0], argv)
