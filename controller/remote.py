"""What the controller runs on the box: the bundle transfer and the agent's commands."""

from __future__ import annotations

import io
import json
import shlex
import tarfile
import time
from collections.abc import Callable
from typing import Any

import structlog

from controller.agent_build import agent_zipapp
from controller.context import BakeContext
from controller.pipeline import BakeFailed
from controller.ssh import CommandTimeout, ConnectionLost

log = structlog.get_logger("kiln.agent")

RUN_DIR = "/var/lib/kiln"
AGENT = f"{RUN_DIR}/agent.pyz"
BUNDLE = f"{RUN_DIR}/bundle"


def bundle_tar(bundle: dict[str, Any], checks: list[dict[str, Any]], files: dict[str, bytes]) -> bytes:
    """agent.pyz + bundle/ as one gzip'd tar: the bake's single transfer."""
    entries = {
        "agent.pyz": agent_zipapp(),
        "bundle/bundle.json": json.dumps(bundle).encode(),
        "bundle/checks.json": json.dumps(checks).encode(),
    }
    entries.update({f"bundle/{path}": data for path, data in files.items()})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for name, data in sorted(entries.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def as_root(ctx: BakeContext, command: str) -> str:
    if ctx.instance.ssh_user == "root":
        return command
    return f"sudo -n sh -c {shlex.quote(command)}"


def agent_command(ctx: BakeContext, *args: str) -> str:
    return as_root(ctx, " ".join(["python3", AGENT, *map(shlex.quote, args)]))


def run_agent(
    ctx: BakeContext,
    command: str,
    on_event: Callable[[dict[str, Any]], None],
    stdin: bytes | None = None,
    timeout: float | None = None,
) -> tuple[int, list[dict[str, Any]], str]:
    """Run a command printing agent events; hand each to ``on_event`` as it arrives.

    ``timeout`` bounds the whole command. When it passes, or the machine stops answering,
    the bake fails saying which step was running and that the rest of the run is lost.
    """
    events: list[dict[str, Any]] = []

    def on_line(line: str) -> None:
        if not line.startswith("{"):
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        events.append(event)
        on_event(event)

    started = time.monotonic()
    try:
        done = ctx.session.run(command, stdin=stdin, on_line=on_line, timeout=timeout)
    except CommandTimeout as exc:
        raise BakeFailed(
            f"the agent did not finish within {timeout:.0f}s (the steps' time limits and a margin); "
            f"{what_was_lost(events, started)}"
        ) from exc
    except ConnectionLost as exc:
        raise BakeFailed(f"{exc}; {what_was_lost(events, started)}") from exc
    if done.rc != 0 and not events:
        raise BakeFailed(f"agent did not run (exit {done.rc}): {done.stderr.strip()[-1500:]}")
    return done.rc, events, done.stderr


def what_was_lost(events: list[dict[str, Any]], started: float) -> str:
    """The agent's run as far as the controller saw it: the step it was in, and what did not report."""
    finished = sum(1 for e in events if e.get("event") == "step")
    running = running_step(events)
    seconds = time.monotonic() - started
    if running is not None:
        return (
            f"lost step {running.get('index')} '{running.get('name')}' while it ran, and every step after it "
            f"({finished} steps had reported, {seconds:.0f}s into the run)"
        )
    return f"lost the rest of the run ({finished} steps had reported, {seconds:.0f}s into the run)"


def running_step(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last step the agent announced and has not reported on."""
    for event in reversed(events):
        if event.get("event") in ("step", "summary"):
            return None
        if event.get("event") == "start":
            return event
    return None


def log_step(event: dict[str, Any], quiet_ok: bool = False, check_mode: bool = False) -> None:
    """One agent step event as one log line (``start`` events only at debug level)."""
    if event.get("event") == "start":
        log.debug("start", index=event.get("index"), step=event.get("name"), module=event.get("module"))
        return
    if event.get("event") != "step":
        return
    status = event.get("status")
    if quiet_ok and status in ("ok", "skipped"):
        return
    fields = {
        "index": event.get("index"),
        "step": event.get("name"),
        "module": event.get("module"),
        "status": status,
        "seconds": event.get("duration"),
    }
    if event.get("handler"):
        fields["handler"] = True
    if check_mode:
        fields["check_mode"] = True
        if status == "changed" and event.get("msg"):
            fields["msg"] = event["msg"]
    if event.get("predicted") is False:
        fields["predicted"] = False
        fields["note"] = "check mode cannot predict this step"
    if event.get("rescued"):
        fields["note"] = "rescued"
    if event.get("ignored"):
        fields["note"] = "ignored"
    if status == "failed":
        fields["error"] = event.get("msg")
        fields["source"] = event.get("source")
        (log.warning if event.get("ignored") or event.get("rescued") else log.error)("step", **fields)
    else:
        if event.get("diff") and event.get("diff_shown"):
            fields["diff"] = event["diff"]
        log.info("step", **fields)
