"""Stage the agent and the bundle for one transfer: the apply's exec carries them and reports the box's facts."""

from __future__ import annotations

import json
from dataclasses import dataclass

import structlog

from kiln.controller.context import BakeContext
from kiln.controller.remote import FreshPayload, box_agent, fresh_payload, known_python
from kiln.controller.stages.connect import WhileBooting

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


@dataclass
class Staged:
    """What the build machine's one agent run carries and does: its payload, the later stages' parts, and whether
    the box compiles the whole agent."""

    fresh: FreshPayload
    later_parts: list[str]
    compile: bool


def staged_for(ctx: BakeContext) -> Staged:
    """The build machine's payload (the agent, its byte code, the bundle) and run: nothing of it needs the machine."""
    from kiln.controller.stages.apply_steps import folded_parts, reboots

    bundle = bundle_of(ctx)
    checks = ctx.compiled.checks
    build = [check for check in checks if check.get("on", "both") in ("both", "build")]
    fresh = fresh_payload(
        bundle,
        checks,
        ctx.compiled.files,
        build_checks=build if len(build) != len(checks) else None,
        python=known_python(base_id(ctx)),
    )
    # the agent's byte code rides along (remote.byte_code_for); a box whose python cannot use it compiles what it
    # imports, or the whole agent once when runs resumed after reboots would compile Jinja2 again
    return Staged(fresh, folded_parts(ctx), reboots(ctx) and uses_jinja(ctx, bundle))


class PushBundle:
    """Stages the agent and the bundle for the apply's exec, which carries them, reports the facts first and runs
    the later parts (:func:`~kiln.controller.stages.apply_steps.folded_parts`): one python start on the box.

    In a bake the connect stage has it make the payload while the machine boots (:meth:`prepare_while_booting`)."""

    name = "push agent and bundle"

    def __init__(self) -> None:
        self.preparing: WhileBooting[Staged] | None = None

    def prepare_while_booting(self, ctx: BakeContext) -> None:
        self.preparing = WhileBooting(lambda: staged_for(ctx))

    def run(self, ctx: BakeContext) -> None:
        box = box_agent(ctx)
        prepared, self.preparing = self.preparing, None
        staged = prepared.result() if prepared is not None else None
        made = "while the machine booted" if staged is not None else "now"
        staged = staged or staged_for(ctx)
        box.later_parts = staged.later_parts  # the idempotence check, verify and the inventory ride in the apply's
        box.compile = staged.compile
        box.pending, box.compiled = staged.fresh.payload, staged.fresh.compiled
        log.info("staged", bytes=len(box.pending), parts=", ".join(box.later_parts) or "-", made=made)

    def undo(self, ctx: BakeContext) -> None:
        """The bundle lives on the instance; cleaning the machine (or removing it) takes it."""


def base_id(ctx: BakeContext) -> str:
    """The id of the image the build machine runs ("" when the provider does not say)."""
    return str(getattr(ctx.base, "id", "") or "")


def log_facts(facts: dict, bytes_sent: int) -> None:
    log.info(
        "facts",
        bytes_sent=bytes_sent,
        os=f"{facts['distribution']} {facts['distribution_version']}",
        arch=facts["arch"],
        pkg_mgr=facts["pkg_mgr"],
    )
