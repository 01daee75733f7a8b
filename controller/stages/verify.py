"""Run the role's checks on the box; any failing check fails the bake.

A check runs on the build machine (before cleaning) and on a fresh machine from the new image
(the test stage) unless its ``on:`` says ``build`` or ``image``.
"""

from __future__ import annotations

import json
from typing import Any

import structlog

from kiln.agent.protocol import CheckStatus, Event
from kiln.controller.context import BakeContext
from kiln.controller.pipeline import BakeFailed
from kiln.controller.remote import BUNDLE, agent_command, as_root, box_agent, run_agent

log = structlog.get_logger("kiln.stage")

#: the checks file the build machine runs when some checks are for the image only
BUILD_CHECKS = f"{BUNDLE}/checks.build.json"
#: what the apply set (registered results, set_fact and include_vars values), kept beside the bundle by the agent
RUN_VARIABLES = "run-vars.json"


def checks_on(checks: list[dict[str, Any]], machine: str) -> list[dict[str, Any]]:
    """The checks that run on ``machine`` (``build`` or ``image``)."""
    return [check for check in checks if check.get("on", "both") in ("both", machine)]


def log_check(event: dict[str, Any], machine: str = "build") -> None:
    if event.get("event") != Event.CHECK:
        return
    fields = {
        "check": event.get("name"),
        "status": event.get("status"),
        "seconds": event.get("duration"),
        "machine": machine,
    }
    if event.get("status") == CheckStatus.FAILED:
        log.error("check", **fields, observed=event.get("observed"), source=event.get("source"))
    else:
        log.info("check", **fields)


def run_checks(
    ctx: BakeContext, command: str, machine: str, stdin: bytes | None = None, where: str = ""
) -> dict[str, Any]:
    """Run an agent ``verify`` command; fail naming every failed check (and ``where`` it failed)."""
    # every check has its own limit; the run as a whole is bounded like one step
    rc, events, stderr = run_agent(
        ctx, command, lambda event: log_check(event, machine), stdin=stdin, timeout=ctx.options.step_timeout
    )
    return checks_outcome(rc, events, stderr, where)


def checks_outcome(rc: int, events: list[dict[str, Any]], stderr: str, where: str = "") -> dict[str, Any]:
    """The checks' summary when every check passed; else BakeFailed naming every failed check."""
    summary = next((e for e in events if e.get("event") == Event.SUMMARY), {"passed": 0, "failed": 0})
    failed = [e for e in events if e.get("event") == Event.CHECK and e.get("status") == CheckStatus.FAILED]
    if rc != 0 or failed:
        detail = "; ".join(f"{e['name']} ({e.get('source', '?')}): {e.get('observed')}" for e in failed)
        raise BakeFailed(f"{len(failed)} check(s) failed{where}: {detail or stderr.strip()[-500:]}")
    return summary


def verify(ctx: BakeContext) -> dict[str, Any]:
    """The checks for the build machine, from the bundle it already holds."""
    checks = checks_on(ctx.compiled.checks, "build")
    if len(checks) == len(ctx.compiled.checks):
        return run_checks(ctx, agent_command(ctx, "verify", f"{BUNDLE}/checks.json"), "build")
    # beside the bundle, whose variables the checks are rendered with; one more round trip, only for
    # roles that have checks for the image alone
    written = ctx.session.run(
        as_root(ctx, f"umask 077 && cat > {BUILD_CHECKS}"), stdin=json.dumps(checks).encode(), timeout=60
    )
    if written.rc != 0:
        raise BakeFailed(f"could not write the build machine's checks (exit {written.rc}): {written.stderr[-500:]}")
    return run_checks(ctx, agent_command(ctx, "verify", BUILD_CHECKS), "build")


def keep_run_variables(ctx: BakeContext) -> None:
    """What the apply set, kept when checks run on the image: the test stage's fresh machine never ran the steps,
    and its checks read those variables as the build machine's did. The apply's run reported them as it ended
    (with the package inventory); else they are read from the build machine."""
    if not ctx.options.test_image or not checks_on(ctx.compiled.checks, "image"):
        return
    reported = box_agent(ctx).run_variables
    if reported is not None:
        ctx.run_variables = reported
        return
    read = ctx.session.run(as_root(ctx, f"cat {BUNDLE}/{RUN_VARIABLES}"), timeout=60)
    if read.rc == 0:
        ctx.run_variables = read.stdout.encode()
    else:
        log.debug("no run variables on the build machine", stderr=read.stderr[-300:])


def image_run_files(ctx: BakeContext) -> dict[str, bytes]:
    """The files beside the image's checks: what the apply set on the build machine (none when it set nothing)."""
    return {RUN_VARIABLES: ctx.run_variables} if ctx.run_variables else {}


class Verify:
    name = "verify"

    def run(self, ctx: BakeContext) -> None:
        if not ctx.compiled.checks:
            log.warning("no checks in verify.yml: the image is not verified", role=ctx.role)
            return
        if not checks_on(ctx.compiled.checks, "build"):
            log.info("every check is for the image (on: image): none on the build machine")
            keep_run_variables(ctx)
            return
        from kiln.controller.stages.apply_steps import take_part

        part = take_part(ctx, self.name)
        if part is None:
            summary = verify(ctx)
        elif part.lost is not None:
            raise part.lost
        else:  # the checks ran in the apply's exec, logged as they came
            summary = checks_outcome(part.rc, part.events, part.stderr)
        ctx.checks = {"passed": summary.get("passed", 0), "failed": summary.get("failed", 0)}
        log.info("verified", **ctx.checks)
        keep_run_variables(ctx)

    def undo(self, ctx: BakeContext) -> None:
        """Nothing to undo."""
