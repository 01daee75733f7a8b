"""``converge --watch``: one SSH connection and one warm agent; every save of the role re-applies it.

The agent runs ``serve`` on the box (facts gathered and modules loaded once) and applies
each bundle the controller sends down the same channel. A save that changes nothing
re-applies the whole role (a no-op run, which also notices drift on the box); a save that
changes a step or a file applies only the steps that changed or use that file, and the
handlers they notify. Changes kiln cannot pin to steps (variables, handlers, steps added
or removed, a file no step names, steps that register results) apply the whole role.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from kiln.agent.protocol import Event
from kiln.controller.context import BakeContext
from kiln.controller.pipeline import BakeFailed

if TYPE_CHECKING:
    from kiln.controller.remote import LoopAllowance

log = structlog.get_logger("kiln.watch")

#: Seconds between looks at the role's files (mtimes), and a bound on each look.
POLL_SECONDS = 0.2
#: Seconds the agent may take to start serving.
START_TIMEOUT = 120.0


# --- what changed ------------------------------------------------------------------------------
def signature(paths: list[Path]) -> dict[str, tuple[int, int]]:
    """(mtime, size) of every file and directory under ``paths``: a save changes it."""
    seen: dict[str, tuple[int, int]] = {}
    for top in paths:
        for folder, dirs, files in os.walk(top):
            for name in [*dirs, *files]:
                path = os.path.join(folder, name)
                try:
                    stat = os.stat(path)
                except OSError:
                    continue
                seen[path] = (stat.st_mtime_ns, stat.st_size)
        if os.path.isfile(top):
            stat = os.stat(top)
            seen[str(top)] = (stat.st_mtime_ns, stat.st_size)
    return seen


def _step_key(step: dict[str, Any]) -> str:
    """A step as it acts (its line in the file moves when a step above it is edited)."""
    return json.dumps({k: v for k, v in step.items() if k != "source"}, sort_keys=True, default=str)


def affected_steps(
    old: dict[str, Any], new: dict[str, Any], old_files: dict[str, bytes], new_files: dict[str, bytes]
) -> list[int] | None:
    """Positions of the top-level steps a change touches; None when the whole role must apply."""
    if {k: v for k, v in old.items() if k != "steps"} != {k: v for k, v in new.items() if k != "steps"}:
        return None
    old_steps, new_steps = old["steps"], new["steps"]
    if len(old_steps) != len(new_steps):
        return None
    touched = {i for i, (a, b) in enumerate(zip(old_steps, new_steps, strict=True)) if _step_key(a) != _step_key(b)}
    for path in set(old_files) | set(new_files):
        if old_files.get(path) == new_files.get(path):
            continue
        ref = json.dumps(path.split("/", 1)[1])  # templates/web/x.j2 is named "web/x.j2" in a step
        users = {i for i, step in enumerate(new_steps) if ref in json.dumps(step)}
        if not users:
            return None  # an included template, or a file no step names: kiln cannot tell who reads it
        touched |= users
    if touched and any("register" in json.dumps(step) for step in new_steps):
        return None  # a step may read what an earlier one registered
    return sorted(touched) if touched else None


# --- the warm agent ------------------------------------------------------------------------------
class WarmAgent:
    """``agent serve`` on one channel of the session: requests down, events up, bounded waits."""

    def __init__(self, ctx: BakeContext) -> None:
        self.ctx = ctx
        self.chan: Any = None
        self.buffer = b""
        self.requests = 0

    def start(self, payload: bytes | None) -> None:
        from kiln.controller.remote import EXIT_NEED_AGENT, with_agent

        events = self._open(payload)
        if any(e.get("event") == Event.NEED_AGENT for e in events):
            log.info("agent sent", reason="the box had no copy with this sha256")
            self.close()
            events = self._open(with_agent(payload))
            if any(e.get("event") == Event.NEED_AGENT for e in events):
                raise BakeFailed(f"the agent sent to the box did not arrive whole (exit {EXIT_NEED_AGENT})")
        if not any(e.get("event") == Event.READY for e in events):
            raise BakeFailed(f"the agent did not start serving: {events[-3:] if events else 'no output'}")

    def _open(self, payload: bytes | None) -> list[dict[str, Any]]:
        from kiln.controller.remote import BUNDLE, agent_command, box_agent, framed

        box = box_agent(self.ctx)
        transport = self.ctx.session.conn.client.get_transport()
        self.chan = transport.open_session(timeout=30)
        self.chan.settimeout(1.0)
        self.chan.exec_command(agent_command(self.ctx, "serve", BUNDLE))
        self.chan.sendall(framed(payload) or b"0\n")
        box.round_trips += 1
        box.bytes_sent += len(payload or b"")
        self.buffer = b""
        events = self.read_until(lambda e: e.get("event") in (Event.READY, Event.NEED_AGENT), START_TIMEOUT)
        for event in events:
            if event.get("event") == Event.AGENT_COMPILED:
                box.compiled = event.get("sha256", "")
            elif event.get("event") == Event.FACTS:
                self.ctx.facts = event["facts"]
        box.sent = box.sent or any(e.get("event") == Event.READY for e in events)
        return events

    def apply(
        self,
        bundle: dict[str, Any],
        files: dict[str, bytes],
        on_event: Callable[[dict[str, Any]], None],
        bound: float,
        loops: LoopAllowance | None = None,
    ) -> list[dict[str, Any]]:
        self.requests += 1
        request = {
            "id": self.requests,
            "bundle": bundle,
            "files": {path: base64.b64encode(data).decode() for path, data in files.items()},
        }
        line = json.dumps(request).encode() + b"\n"
        self.chan.sendall(line)
        from kiln.controller.remote import box_agent

        box_agent(self.ctx).bytes_sent += len(line)
        return self.read_until(lambda e: e.get("event") == Event.SERVED, bound, on_event, loops)

    def read_until(
        self,
        last: Callable[[dict[str, Any]], bool],
        bound: float,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        loops: LoopAllowance | None = None,
    ) -> list[dict[str, Any]]:
        """Events up to and including the one ``last`` accepts; BakeFailed past ``bound`` (grown by ``loops``)
        or at end of output."""
        deadline = time.monotonic() + bound
        events: list[dict[str, Any]] = []
        while True:
            while b"\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n", 1)
                if not raw.startswith(b"{"):
                    continue
                event = json.loads(raw)
                events.append(event)
                if loops is not None:
                    grown = loops.extra(event)
                    deadline, bound = deadline + grown, bound + grown
                if on_event is not None:
                    on_event(event)
                if last(event):
                    return events
            if time.monotonic() > deadline:
                raise BakeFailed(f"the warm agent did not answer within {bound:.0f}s")
            try:
                data = self.chan.recv(65536)
            except TimeoutError:
                self.ctx.session._check_alive()
                continue
            if not data:
                if events and events[-1].get("event") == Event.NEED_AGENT:
                    return events
                err = self.chan.recv_stderr(65536).decode(errors="replace") if self.chan.recv_stderr_ready() else ""
                raise BakeFailed(f"the warm agent ended: {err.strip()[-800:] or 'no output'}")
            self.buffer += data

    def close(self) -> None:
        if self.chan is None:
            return
        try:
            self.chan.shutdown_write()  # end of input: serve returns
            deadline = time.monotonic() + 5
            while not self.chan.exit_status_ready() and time.monotonic() < deadline:
                time.sleep(0.02)
        except OSError:
            pass
        self.chan.close()
        self.chan = None


# --- the loop ----------------------------------------------------------------------------------
class Watch:
    """The role's bundle as last applied, and what the next save changes in it."""

    def __init__(self, ctx: BakeContext, agent: WarmAgent, recompile: Callable[[], Any]) -> None:
        self.ctx = ctx
        self.agent = agent
        self.recompile = recompile
        self.bundle: dict[str, Any] = {}
        self.files: dict[str, bytes] = {}
        self.seen: dict[str, tuple[int, int]] = {}

    def watched(self) -> list[Path]:
        roles = self.ctx.options.playbooks_dir / "roles"
        return [roles / name for name in self.ctx.compiled.chain] + [self.ctx.options.playbooks_dir / "kiln.yaml"]

    def apply(self, only: list[int] | None, files: dict[str, bytes]) -> dict[str, Any]:
        from kiln.controller.remote import LoopAllowance, log_step
        from kiln.controller.stages.apply_steps import apply_bound, looped_step_limits

        bundle = dict(self.bundle)
        if only is not None:
            bundle["steps"] = [bundle["steps"][i] for i in only]
        started = time.monotonic()
        bound = apply_bound(bundle["steps"], bundle["handlers"], self.ctx.options.step_timeout)
        loops = LoopAllowance(looped_step_limits(bundle["steps"], self.ctx.options.step_timeout))
        events = self.agent.apply(bundle, files, lambda e: log_step(e, quiet_ok=True), bound, loops)
        summary = next((e for e in events if e.get("event") == Event.SUMMARY), {})
        log.info(
            "re-applied" if self.requests_done else "applied",
            steps="all" if only is None else len(only),
            ok=summary.get("ok", 0),
            changed=summary.get("changed", 0),
            failed=summary.get("failed", 0),
            seconds=round(time.monotonic() - started, 3),
        )
        self.requests_done += 1
        return summary

    requests_done = 0

    def first(self) -> None:
        from kiln.controller.stages.push_bundle import bundle_of

        self.seen = signature(self.watched())  # before the first apply: a save made meanwhile is seen
        self.bundle, self.files = bundle_of(self.ctx), dict(self.ctx.compiled.files)
        self.apply(None, {})  # the files arrived with the agent's start

    def changed(self) -> None:
        """A save: compile again (an error is shown, and the watch goes on) and apply what it touched."""
        from kiln.controller.model import InvalidInput
        from kiln.controller.stages.push_bundle import bundle_of

        try:
            self.ctx.compiled = self.recompile()
        except InvalidInput as exc:
            print(exc.render(), flush=True)
            log.warning("not applied: invalid input (fix it and save again)")
            return
        bundle, files = bundle_of(self.ctx), dict(self.ctx.compiled.files)
        only = affected_steps(self.bundle, bundle, self.files, files)
        sent = {path: data for path, data in files.items() if self.files.get(path) != data}
        self.bundle, self.files = bundle, files
        self.apply(only, sent)

    def loop(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Look at the files every POLL_SECONDS until ``stop()`` (or Ctrl-C)."""
        while not stop():
            time.sleep(POLL_SECONDS)
            now = signature(self.watched())
            if now != self.seen:
                self.seen = now
                self.changed()
