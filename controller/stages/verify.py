"""Run the role's checks on the box; any failing check fails the bake."""

from __future__ import annotations

from typing import Any

import structlog

from controller.context import BakeContext
from controller.pipeline import BakeFailed
from controller.remote import BUNDLE, agent_command, run_agent

log = structlog.get_logger("kiln.stage")


def log_check(event: dict[str, Any]) -> None:
    if event.get("event") != "check":
        return
    fields = {"check": event.get("name"), "status": event.get("status"), "seconds": event.get("duration")}
    if event.get("status") == "failed":
        log.error("check", **fields, observed=event.get("observed"), source=event.get("source"))
    else:
        log.info("check", **fields)


def verify(ctx: BakeContext) -> dict[str, Any]:
    # every check has its own limit; the run as a whole is bounded like one step
    rc, events, stderr = run_agent(ctx, agent_command(ctx, "verify", f"{BUNDLE}/checks.json"), log_check,
                                   timeout=ctx.options.step_timeout)
    summary = next((e for e in events if e.get("event") == "summary"), {"passed": 0, "failed": 0})
    failed = [e for e in events if e.get("event") == "check" and e.get("status") == "failed"]
    if rc != 0 or failed:
        detail = "; ".join(f"{e['name']} ({e.get('source', '?')}): {e.get('observed')}" for e in failed)
        raise BakeFailed(f"{len(failed)} check(s) failed: {detail or stderr.strip()[-500:]}")
    return summary


class Verify:
    name = "verify"

    def run(self, ctx: BakeContext) -> None:
        if not ctx.compiled.checks:
            log.warning("no checks in verify.yml: the image is not verified", role=ctx.role)
            return
        summary = verify(ctx)
        ctx.checks = {"passed": summary.get("passed", 0), "failed": summary.get("failed", 0)}
        log.info("verified", **ctx.checks)

    def undo(self, ctx: BakeContext) -> None:
        """Nothing to undo."""
