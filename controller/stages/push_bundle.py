"""Send the agent and the bundle in one transfer; the same exec checks the agent and reports the box's facts."""

from __future__ import annotations

import json

import structlog

from kiln.agent.protocol import Event
from kiln.controller.context import BakeContext
from kiln.controller.remote import agent_command, box_agent, run_agent, stage_bundle
from kiln.controller.stepfiles.compile import bundle_json

log = structlog.get_logger("kiln.stage")

#: Seconds for the transfer and the facts (a frozen machine is noticed sooner, by the keepalives).
PUSH_TIMEOUT = 600.0


def extra_vars(ctx: BakeContext) -> dict:
    return {"kiln": {"role": ctx.role, "version": ctx.version, "build_id": ctx.build_id}}


def bundle_of(ctx: BakeContext) -> dict:
    return dict(bundle_json(ctx.compiled, extra_vars(ctx)), step_timeout=ctx.options.step_timeout)


def uses_jinja(ctx: BakeContext, bundle: dict) -> bool:
    """Whether the agent's runs on this machine import Jinja2 (a template, an expression anywhere).

    A build machine runs the agent twice (facts, then the apply with its re-run and checks): compiling
    the whole agent there (~150 ms) pays only when Jinja2 would otherwise be compiled from source in
    each run; without it, the few modules a run imports compile faster in memory."""
    text = json.dumps([bundle, ctx.compiled.checks])
    if "{{" in text or "{%" in text or any(path.startswith("templates/") for path in ctx.compiled.files):
        return True
    return has_expressions(ctx.compiled.steps) or has_expressions(ctx.compiled.handlers)


#: step keywords whose string values the agent evaluates as Jinja2 expressions
EXPRESSION_KEYWORDS = ("when", "until", "changed_when", "failed_when", "loop", "retries", "delay")


def has_expressions(steps: list) -> bool:
    for step in steps:
        if any(isinstance(step.get(key), (str, list)) for key in EXPRESSION_KEYWORDS):
            return True
        if any(has_expressions(step.get(section) or []) for section in ("block", "rescue", "always")):
            return True
    return False


class PushBundle:
    name = "push agent and bundle"

    def run(self, ctx: BakeContext) -> None:
        from kiln.controller.stages.apply_steps import folded_parts

        box = box_agent(ctx)
        box.later_parts = folded_parts(ctx)  # the idempotence check and verify ride in the apply's exec
        bundle = bundle_of(ctx)
        box.compile = uses_jinja(ctx, bundle)
        size = stage_bundle(ctx, bundle)
        rc, events, stderr = run_agent(ctx, agent_command(ctx, "facts"), lambda e: None, timeout=PUSH_TIMEOUT)
        facts = next((e["facts"] for e in events if e.get("event") == Event.FACTS), None)
        if rc != 0 or facts is None:
            from kiln.controller.pipeline import BakeFailed

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
