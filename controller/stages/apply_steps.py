"""Apply every step with one agent process; stream each step's status as it happens.

Two things happen between the agent's events:

- a step that runs long (a big package install) gets a "still running" line every
  ``PROGRESS_SECONDS`` (the agent announces each step with a ``start`` event);
- a ``reboot`` event (the ``reboot`` module; the agent saved its state and exited 3):
  the SSH session is closed, the provider brings the machine back
  (``Provider.reboot_wait``), the session reconnects (same pinned host key) and the
  agent runs ``apply --resume``, which continues with the step after the reboot.

The stages after the apply ride in its exec (:func:`folded_parts`): once the apply is
clean, the same agent process applies again (the idempotence check) and runs the build
machine's checks, announcing each part with a ``phase`` event; each part has its own
time bound from the moment it begins. What each part reported is kept for its stage
(``BoxAgent.done_parts``), which judges it as it would its own run: a step that changed
again fails the idempotence check, a failed check fails verify, a part lost to a time
bound or a silent machine fails its own stage. The same run reports the facts first (for the
push stage, which only stages the bundle) and, when every part passed, the installed packages
last (for the clean stage): a bake starts python once on its build machine. A role with a
``reboot`` step is not folded (a reboot ends the exec): its stages run their own execs.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import structlog

from kiln.agent.protocol import Event, StepStatus
from kiln.controller.context import BakeContext, StepCounts
from kiln.controller.pipeline import BakeFailed
from kiln.controller.remote import BUNDLE, RunLost, agent_command, box_agent, log_step, remember_python, run_agent
from kiln.controller.stages.verify import BUILD_CHECKS, checks_on, log_check

log = structlog.get_logger("kiln.stage")

#: Seconds between "still running" lines for a step that has not finished (KILN_PROGRESS_SECONDS).
PROGRESS_SECONDS = 10.0
#: How many reboots one apply may do before kiln calls it a reboot loop.
MAX_REBOOTS = 10
#: Seconds an agent run may take beyond its steps' time limits: starting, facts, reporting (KILN_AGENT_MARGIN).
AGENT_MARGIN = 120.0


def apply_bound(steps: list[dict[str, Any]], handlers: list[dict[str, Any]], default: float) -> float:
    """The longest one agent run may take: every step at its limit, each handler once per flush, and a margin.

    A step's limit covers all its loop items and retries, so the sum holds whatever the box does.
    """
    limits = [float(step.get("timeout") or default) for step in module_steps(steps)]
    flushes = 1 + sum(1 for step in module_steps(steps, flushes=True) if step.get("module") == "flush_handlers")
    handler_limits = [float(h.get("timeout") or default) for h in module_steps(handlers)]
    margin = float(os.environ.get("KILN_AGENT_MARGIN") or AGENT_MARGIN)
    return sum(limits) + flushes * sum(handler_limits) + margin


def looped_step_limits(steps: list[dict[str, Any]], default: float) -> dict[int, float]:
    """The limit of each step inside an include loop, by index. Such a step runs once per item, a count only
    the box knows: :func:`apply_bound` counts it once, and each later run adds its limit as it starts."""
    limits: dict[int, float] = {}
    for step in steps:
        if "block" not in step:
            continue
        if step.get("loop") is not None:
            limits.update(
                {s["index"]: float(s.get("timeout") or default) for s in module_steps([step]) if "index" in s}
            )
        else:
            for section in ("block", "rescue", "always"):
                limits.update(looped_step_limits(step.get(section) or [], default))
    return limits


def module_steps(steps: list[dict[str, Any]], flushes: bool = False) -> list[dict[str, Any]]:
    """The steps that run a module, blocks opened (with ``flushes``: the flush_handlers steps too)."""
    found: list[dict[str, Any]] = []
    for step in steps:
        if "block" in step:
            for section in ("block", "rescue", "always"):
                found.extend(module_steps(step.get(section) or [], flushes))
        elif step.get("module") != "flush_handlers" or flushes:
            found.append(step)
    return found


IDEMPOTENCE, VERIFY = "idempotence check", "verify"
#: the clean stage's package inventory: the apply's run ends with it when every part passed (``BoxAgent.packages``)
INVENTORY = "package inventory"


@dataclass
class Part:
    """A later stage's part of the apply's run: what the agent reported in it, or why it was lost."""

    rc: int
    events: list[dict[str, Any]]
    stderr: str
    lost: RunLost | None = None


def reboots(ctx: BakeContext) -> bool:
    """Whether a step or handler of the role reboots the machine (a reboot ends the agent's exec)."""
    steps = module_steps(ctx.compiled.steps) + module_steps(ctx.compiled.handlers)
    return any(step.get("module") == "reboot" for step in steps)


def folded_parts(ctx: BakeContext) -> list[str]:
    """A bake's later stages that ride in the apply's exec: the idempotence check (when gated), verify (when the
    build machine has checks) and the clean stage's package inventory; none in check mode (they do not run) or
    when a step reboots (a reboot ends the exec).

    The bake's push stage asks for them (``BoxAgent.later_parts``); converge, which has none of them, does not."""
    if ctx.options.check_mode or reboots(ctx):
        return []
    parts = [IDEMPOTENCE] if ctx.options.idempotence_gate else []
    return parts + ([VERIFY] if checks_on(ctx.compiled.checks, "build") else []) + [INVENTORY]


def part_flags(ctx: BakeContext, parts: list[str]) -> list[str]:
    flags = ["--rerun"] if IDEMPOTENCE in parts else []
    if VERIFY in parts:
        every = len(checks_on(ctx.compiled.checks, "build")) == len(ctx.compiled.checks)
        flags += ["--verify", f"{BUNDLE}/checks.json" if every else BUILD_CHECKS]
    return flags + (["--packages"] if INVENTORY in parts else [])


def split_parts(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The run's events by part: ``""`` (the apply), then each part a ``phase`` event opened."""
    found: dict[str, list[dict[str, Any]]] = {"": []}
    current = ""
    for event in events:
        if event.get("event") == Event.PHASE:
            current = str(event.get("phase"))
            found[current] = []
        else:
            found[current].append(event)
    return found


def take_part(ctx: BakeContext, stage: str) -> Part | None:
    """What the apply's run did of ``stage`` (once), or None: the stage runs its own exec."""
    return box_agent(ctx).done_parts.pop(stage, None)


def counts_of(summary: dict[str, Any]) -> StepCounts:
    return StepCounts(**{k: int(summary.get(k, 0)) for k in ("ok", "changed", "failed", "skipped", "ignored")})


def counts_seen(events: list[dict[str, Any]], lost: bool) -> StepCounts:
    """The counts of the step events that arrived before the run broke off; ``lost``: the step
    running then failed with it (a timeout, a lost machine)."""
    counts = StepCounts()
    for event in events:
        status = "ignored" if event.get("ignored") else event.get("status")
        if hasattr(counts, str(status)):
            setattr(counts, status, getattr(counts, status) + 1)
    if lost:
        counts.failed += 1
    return counts


class StepsFailed(BakeFailed):
    """A step failed and the agent said so in its summary (which holds the counts)."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


class Progress:
    """A ticker thread: logs "still running" for the step the agent announced and has not finished."""

    def __init__(self, interval: float | None = None) -> None:
        self.interval = (
            interval if interval is not None else float(os.environ.get("KILN_PROGRESS_SECONDS") or PROGRESS_SECONDS)
        )
        self.current: dict[str, Any] | None = None
        self.since = 0.0
        self.last_tick = 0.0
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.context = structlog.contextvars.get_contextvars()
        self.thread = threading.Thread(target=self._loop, name="kiln-progress", daemon=True)

    def __enter__(self) -> Progress:
        if self.interval > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(2)

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        with self.lock:
            if kind == "start":
                self.current = event
                self.since = self.last_tick = time.monotonic()
            elif kind in ("step", "summary"):
                self.current = None

    def _loop(self) -> None:
        structlog.contextvars.bind_contextvars(**self.context)  # the bake's role and build id, in this thread
        while not self.stopped.wait(min(1.0, self.interval)):
            with self.lock:
                current, now = self.current, time.monotonic()
                due = current is not None and now - self.last_tick >= self.interval
                if due:
                    self.last_tick = now
            if due:
                fields = {
                    "index": current.get("index"),
                    "step": current.get("name"),
                    "module": current.get("module"),
                    "seconds": round(now - self.since, 1),
                }
                if current.get("handler"):
                    fields["handler"] = True
                log.info("still running", **fields)


def apply(
    ctx: BakeContext,
    label: str,
    show_diff: bool,
    keep: list[dict[str, Any]] | None = None,
    parts: list[str] | None = None,
) -> dict[str, Any]:
    """Apply the bundle (one agent run, and its resumes after reboots); the summary, or BakeFailed.

    ``parts``: later stages that run in the same exec once the apply is clean (:func:`folded_parts`);
    what each reported is kept for it in ``done_parts``."""
    parts = list(parts or [])
    flags = (["--check"] if ctx.options.check_mode else []) + (["--diff"] if ctx.options.diff else [])
    bound = apply_bound(ctx.compiled.steps, ctx.compiled.handlers, ctx.options.step_timeout)
    repeats = looped_step_limits(ctx.compiled.steps, ctx.options.step_timeout)
    phase = {"now": ""}
    seen: list[dict[str, Any]] = []

    with Progress() as progress:

        def on_event(event: dict[str, Any]) -> None:
            seen.append(event)
            if event.get("event") == Event.FACTS:
                from kiln.controller.stages.push_bundle import base_id, log_facts

                log_facts(event["facts"], box_agent(ctx).bytes_sent)
                remember_python(base_id(ctx), event["facts"])
            if event.get("event") == Event.PHASE:
                phase["now"] = event.get("phase", "")
                log.info("part of the apply's run", part=phase["now"])
            progress.on_event(event)
            if phase["now"] == VERIFY:
                log_check(event, "build")
                return
            event["diff_shown"] = show_diff or phase["now"] == IDEMPOTENCE
            mine = phase["now"] == ""
            log_step(event, quiet_ok=keep is None or not mine, check_mode=ctx.options.check_mode)
            if mine and keep is not None and event.get("event") == Event.STEP:
                keep.append(event)

        bounds = {IDEMPOTENCE: bound, VERIFY: ctx.options.step_timeout}
        command = agent_command(ctx, "apply", BUNDLE, *flags, *part_flags(ctx, parts))
        try:
            rc, events, stderr = run_agent(
                ctx, command, on_event, timeout=bound, phase_bounds=bounds, repeat_limits=repeats
            )
        except RunLost as lost:
            if not lost.phase:
                raise
            box_agent(ctx).done_parts[lost.phase] = Part(1, [], "", lost)  # the apply itself was whole
            return _summary_or_fail(label, 0, split_parts(seen)[""], "")
        reboots = 0
        while (reboot := _reboot_event(events)) is not None:
            reboots += 1
            if reboots > MAX_REBOOTS:
                raise BakeFailed(f"{label}: more than {MAX_REBOOTS} reboots in one apply (a reboot loop?)")
            reboot_and_reconnect(ctx, reboot)
            parts = []  # the resumed run is the apply's alone: the later stages run their own
            rc, events, stderr = run_agent(
                ctx,
                agent_command(ctx, "apply", BUNDLE, "--resume", *flags),
                on_event,
                timeout=bound,
                repeat_limits=repeats,
            )
    by_part = split_parts(events)
    later = [name for name in parts if name in by_part]
    for name in later:  # the exit status is the last part's; the parts before it passed
        box_agent(ctx).done_parts[name] = Part(rc if name == later[-1] else 0, by_part[name], stderr)
    return _summary_or_fail(label, 0 if later else rc, by_part[""], stderr)


def _summary_or_fail(label: str, rc: int, events: list[dict[str, Any]], stderr: str) -> dict[str, Any]:
    """The run's summary when the steps all went well; else BakeFailed (StepsFailed naming the failed step)."""
    summary = next((e for e in events if e.get("event") == Event.SUMMARY), None)
    if summary is None:
        raise BakeFailed(f"{label}: the agent stopped without a summary (exit {rc}): {stderr.strip()[-800:]}")
    if rc != 0 or not summary.get("ok_run"):
        failed = next(
            (
                e
                for e in events
                if e.get("event") == Event.STEP
                and e.get("status") == StepStatus.FAILED
                and not e.get("ignored")
                and not e.get("rescued")
            ),
            {},
        )
        raise StepsFailed(
            f"step '{summary.get('failed_step')}' ({failed.get('source', '?')}) failed: {summary.get('error', '')}",
            summary,
        )
    return summary


def _reboot_event(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The agent's ``reboot`` event when it is the last word of this run (no summary after it)."""
    for event in reversed(events):
        if event.get("event") == Event.SUMMARY:
            return None
        if event.get("event") == Event.REBOOT:
            return event
    return None


def reboot_and_reconnect(ctx: BakeContext, reboot: dict[str, Any]) -> None:
    """The agent scheduled a reboot and exited: wait it out, reconnect (host key still pinned)."""
    timeout = float(reboot.get("timeout") or 300)
    log.info("rebooting", index=reboot.get("index"), step=reboot.get("name"), timeout=timeout)
    started = time.monotonic()
    ctx.session.close()
    try:
        ctx.provider.reboot_wait(ctx.instance, timeout)
        left = max(timeout - (time.monotonic() - started), 30.0)
        ctx.session.wait_until_ready(left)
    except BakeFailed:
        raise
    except Exception as exc:  # the provider's or SSH's own errors, named as the reboot's
        raise BakeFailed(
            f"step '{reboot.get('name')}': the machine did not come back from its reboot within {timeout:.0f}s: {exc}"
        ) from exc
    log.info(
        "rebooted", index=reboot.get("index"), step=reboot.get("name"), seconds=round(time.monotonic() - started, 1)
    )


class ApplySteps:
    name = "apply steps"

    def run(self, ctx: BakeContext) -> None:
        try:
            parts = box_agent(ctx).later_parts
            summary = apply(ctx, "apply", show_diff=ctx.options.diff, keep=ctx.step_events, parts=parts)
        except StepsFailed as exc:  # RECAP must count the failure
            ctx.apply_counts = counts_of(exc.summary)
            raise
        except Exception:
            ctx.apply_counts = counts_seen(ctx.step_events, lost=True)
            raise
        except BaseException:  # noqa: B036 - interrupted: what finished, nothing more
            ctx.apply_counts = counts_seen(ctx.step_events, lost=False)
            raise
        ctx.apply_counts = counts_of(summary)
        log.info("applied", **ctx.apply_counts.as_dict(), seconds=summary.get("duration"))

    def undo(self, ctx: BakeContext) -> None:
        """Changes live on the instance, which is removed."""


class IdempotenceCheck:
    """A second apply must change nothing (steps marked ``idempotent: false`` excepted)."""

    name = "idempotence check"

    def run(self, ctx: BakeContext) -> None:
        part = take_part(ctx, self.name)
        if part is None:
            summary = apply(ctx, "idempotence check", show_diff=True)
        elif part.lost is not None:
            raise part.lost
        else:  # it ran in the apply's exec, its steps logged as they came
            summary = _summary_or_fail("idempotence check", part.rc, part.events, part.stderr)
        ctx.rerun_counts = counts_of(summary)
        again = [s for s in summary.get("changed_steps", []) if s.get("idempotent", True)]
        if again:
            names = ", ".join(f"#{s['index']} '{s['name']}'" for s in again)
            raise BakeFailed(
                f"not idempotent: a second apply changed {names} (fix the step, or mark it `idempotent: false  # why`)"
            )
        log.info("idempotent", rerun_seconds=summary.get("duration"))

    def undo(self, ctx: BakeContext) -> None:
        """Nothing to undo."""
