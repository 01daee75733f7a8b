"""Send the agent and the bundle in one transfer; the same exec checks the agent and reports the box's facts."""

from __future__ import annotations

import structlog

from controller.context import BakeContext
from controller.remote import agent_command, box_agent, run_agent, stage_bundle
from controller.stepfiles.compile import bundle_json

log = structlog.get_logger("kiln.stage")

#: Seconds for the transfer and the facts (a frozen machine is noticed sooner, by the keepalives).
PUSH_TIMEOUT = 600.0


def extra_vars(ctx: BakeContext) -> dict:
    return {"kiln": {"role": ctx.role, "version": ctx.version, "build_id": ctx.build_id}}


def bundle_of(ctx: BakeContext) -> dict:
    return dict(bundle_json(ctx.compiled, extra_vars(ctx)), step_timeout=ctx.options.step_timeout)


class PushBundle:
    name = "push agent and bundle"

    def run(self, ctx: BakeContext) -> None:
        from controller.stages.apply_steps import folded_parts

        box_agent(ctx).later_parts = folded_parts(ctx)  # the idempotence check and verify ride in the apply's exec
        size = stage_bundle(ctx, bundle_of(ctx))
        rc, events, stderr = run_agent(ctx, agent_command(ctx, "facts"), lambda e: None, timeout=PUSH_TIMEOUT)
        facts = next((e["facts"] for e in events if e.get("event") == "facts"), None)
        if rc != 0 or facts is None:
            from controller.pipeline import BakeFailed

            raise BakeFailed(f"agent could not start on the box (exit {rc}): {stderr.strip()[-800:]}")
        ctx.facts = facts
        log.info(
            "facts",
            bytes_sent=size,
            os=f"{facts['distribution']} {facts['distribution_version']}",
            arch=facts["arch"],
            pkg_mgr=facts["pkg_mgr"],
        )

    def undo(self, ctx: BakeContext) -> None:
        """The bundle lives on the instance; cleaning the machine (or removing it) takes it."""
