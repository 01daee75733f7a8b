"""Send the agent and the bundle in one transfer; the same exec reports the box's facts."""

from __future__ import annotations

import structlog

from controller.context import BakeContext
from controller.remote import AGENT, RUN_DIR, as_root, bundle_tar, run_agent
from controller.stepfiles.compile import bundle_json

log = structlog.get_logger("kiln.stage")

#: Seconds for the transfer and the facts (a frozen machine is noticed sooner, by the keepalives).
PUSH_TIMEOUT = 600.0


def extra_vars(ctx: BakeContext) -> dict:
    return {"kiln": {"role": ctx.role, "version": ctx.version, "build_id": ctx.build_id}}


class PushBundle:
    name = "push agent and bundle"

    def run(self, ctx: BakeContext) -> None:
        bundle = dict(bundle_json(ctx.compiled, extra_vars(ctx)), step_timeout=ctx.options.step_timeout)
        payload = bundle_tar(bundle, ctx.compiled.checks, ctx.compiled.files)
        command = as_root(
            ctx,
            f"mkdir -p {RUN_DIR} && cd {RUN_DIR} && rm -rf bundle && umask 077 && tar -xzf - && python3 {AGENT} facts",
        )
        rc, events, stderr = run_agent(ctx, command, lambda e: None, stdin=payload, timeout=PUSH_TIMEOUT)
        facts = next((e["facts"] for e in events if e.get("event") == "facts"), None)
        if rc != 0 or facts is None:
            from controller.pipeline import BakeFailed

            raise BakeFailed(f"agent could not start on the box (exit {rc}): {stderr.strip()[-800:]}")
        ctx.facts = facts
        log.info(
            "facts",
            bytes_sent=len(payload),
            os=f"{facts['distribution']} {facts['distribution_version']}",
            arch=facts["arch"],
            pkg_mgr=facts["pkg_mgr"],
        )

    def undo(self, ctx: BakeContext) -> None:
        """The bundle lives on the instance; cleaning the machine (or removing it) takes it."""
