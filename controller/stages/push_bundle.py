"""Stage the agent and the bundle for one transfer: the apply's exec carries them and reports the box's facts."""

from __future__ import annotations

import json

import structlog

from kiln.controller.context import BakeContext
from kiln.controller.remote import box_agent, stage_bundle

log = structlog.get_logger("kiln.stage")


def extra_vars(ctx: BakeContext) -> dict:
    return {"kiln": {"role": ctx.role, "version": ctx.version, "build_id": ctx.build_id}}


def bundle_of(ctx: BakeContext) -> dict:
    from kiln.controller.stepfiles.compile import bundle_json  # not on the command line's start: a cached role

    return dict(bundle_json(ctx.compiled, extra_vars(ctx)), step_timeout=ctx.options.step_timeout)


def uses_jinja(ctx: BakeContext, bundle: dict) -> bool:
    """Whether the agent's runs on this machine import Jinja2 (a template, an expression anywhere).

    Compiling the whole agent on the box (~150 ms) pays only when several runs would each compile Jinja2 from
    source (a role that reboots: the apply resumes in another run); one run compiles what it imports, in memory."""
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
    """Stages the agent and the bundle for the apply's exec, which carries them, reports the facts first and runs
    the later parts (:func:`~kiln.controller.stages.apply_steps.folded_parts`): one python start on the box."""

    name = "push agent and bundle"

    def run(self, ctx: BakeContext) -> None:
        from kiln.controller.stages.apply_steps import folded_parts, reboots

        box = box_agent(ctx)
        box.later_parts = folded_parts(ctx)  # the idempotence check, verify and the inventory ride in the apply's
        bundle = bundle_of(ctx)
        # the agent's byte code rides along (remote.byte_code_for); a box whose python cannot use it compiles what it
        # imports, or the whole agent once when runs resumed after reboots would compile Jinja2 again
        box.compile = reboots(ctx) and uses_jinja(ctx, bundle)
        size = stage_bundle(ctx, bundle, byte_code=True)
        log.info("staged", bytes=size, parts=", ".join(box.later_parts) or "-")

    def undo(self, ctx: BakeContext) -> None:
        """The bundle lives on the instance; cleaning the machine (or removing it) takes it."""


def log_facts(facts: dict, bytes_sent: int) -> None:
    log.info(
        "facts",
        bytes_sent=bytes_sent,
        os=f"{facts['distribution']} {facts['distribution_version']}",
        arch=facts["arch"],
        pkg_mgr=facts["pkg_mgr"],
    )
