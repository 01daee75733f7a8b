"""Apply every step with one agent process; stream each step's status as it happens."""

from __future__ import annotations

from typing import Any

import structlog

from controller.context import BakeContext, StepCounts
from controller.pipeline import BakeFailed
from controller.remote import BUNDLE, agent_command, log_step, run_agent

log = structlog.get_logger("kiln.stage")


def counts_of(summary: dict[str, Any]) -> StepCounts:
    return StepCounts(**{k: int(summary.get(k, 0)) for k in ("ok", "changed", "failed", "skipped", "ignored")})


def apply(ctx: BakeContext, label: str, show_diff: bool, keep: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    flags = (["--check"] if ctx.options.check_mode else []) + (["--diff"] if ctx.options.diff else [])

    def on_event(event: dict[str, Any]) -> None:
        event["diff_shown"] = show_diff
        log_step(event, quiet_ok=keep is None)
        if keep is not None and event.get("event") == "step":
            keep.append(event)

    rc, events, stderr = run_agent(ctx, agent_command(ctx, "apply", BUNDLE, *flags), on_event)
    summary = next((e for e in events if e.get("event") == "summary"), None)
    if summary is None:
        raise BakeFailed(f"{label}: the agent stopped without a summary (exit {rc}): {stderr.strip()[-800:]}")
    if rc != 0 or not summary.get("ok_run"):
        failed = next((e for e in events if e.get("event") == "step" and e.get("status") == "failed"
                       and not e.get("ignored")), {})
        raise BakeFailed(f"step '{summary.get('failed_step')}' ({failed.get('source', '?')}) failed: "
                         f"{summary.get('error', '')}")
    return summary


class ApplySteps:
    name = "apply steps"

    def run(self, ctx: BakeContext) -> None:
        summary = apply(ctx, "apply", show_diff=ctx.options.diff, keep=ctx.step_events)
        ctx.apply_counts = counts_of(summary)
        log.info("applied", **ctx.apply_counts.as_dict(), seconds=summary.get("duration"))

    def undo(self, ctx: BakeContext) -> None:
        """Changes live on the instance, which is removed."""


class IdempotenceCheck:
    """A second apply must change nothing (steps marked ``idempotent: false`` excepted)."""

    name = "idempotence check"

    def run(self, ctx: BakeContext) -> None:
        summary = apply(ctx, "idempotence check", show_diff=True)
        ctx.rerun_counts = counts_of(summary)
        again = [s for s in summary.get("changed_steps", []) if s.get("idempotent", True)]
        if again:
            names = ", ".join(f"#{s['index']} '{s['name']}'" for s in again)
            raise BakeFailed(f"not idempotent: a second apply changed {names} "
                             "(fix the step, or mark it `idempotent: false  # why`)")
        log.info("idempotent", rerun_seconds=summary.get("duration"))

    def undo(self, ctx: BakeContext) -> None:
        """Nothing to undo."""
