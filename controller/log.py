"""structlog set up once: a readable console on a terminal, JSON lines with --json or in CI."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog


def wants_json(flag: bool | None = None) -> bool:
    if flag is not None and flag:
        return True
    return bool(os.environ.get("KILN_JSON") or os.environ.get("CI"))


class Redact:
    """Replace secret values (from no_log steps) in every rendered field."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        self.secrets = [s for s in (secrets or []) if s]

    def __call__(self, logger: Any, method: str, event_dict: dict) -> dict:
        if not self.secrets:
            return event_dict
        for key, value in event_dict.items():
            if isinstance(value, str):
                for secret in self.secrets:
                    value = value.replace(secret, "<redacted>")
                event_dict[key] = value
        return event_dict


REDACT = Redact()

STATUS_COLORS = {"ok": "\x1b[32m", "changed": "\x1b[33m", "failed": "\x1b[31m", "skipped": "\x1b[36m",
                 "passed": "\x1b[32m"}
RESET = "\x1b[0m"
QUIET_KEYS = ("timestamp", "level", "role", "build_id", "logger")


class TerminalRenderer:
    """A view a person follows: one line per stage, step and check, then a recap.

    Events it does not know fall through to structlog's ConsoleRenderer.
    """

    def __init__(self, colors: bool) -> None:
        self.colors = colors

    def paint(self, status: str, text: str) -> str:
        return f"{STATUS_COLORS.get(status, '')}{text}{RESET}" if self.colors and status in STATUS_COLORS else text

    def __call__(self, logger: Any, method: str, event_dict: dict) -> str:
        event = event_dict.get("event")
        render = getattr(self, f"_{str(event).replace(' ', '_')}", None)
        if render is not None:
            line = render(event_dict)
            if line is None:
                raise structlog.DropEvent
            return line
        level = event_dict.get("level", "info")
        fields = " ".join(f"{k}={v}" for k, v in event_dict.items() if k not in QUIET_KEYS and k != "event")
        head = f"{level.upper()}: " if level in ("warning", "error", "critical") else ""
        text = f"    {head}{event}  {fields}".rstrip()
        return self.paint("failed" if level in ("error", "critical") else "", text) if head else text

    def _bake(self, e: dict) -> str:
        return (f"kiln: baking {e.get('role')} on {e.get('provider')}, build {e.get('build_id')} "
                f"(roles {e.get('chain')}; {e.get('steps')} steps, {e.get('checks')} checks)")

    def _stage(self, e: dict) -> str:
        return f"==> {e.get('stage')}"

    def _stage_done(self, e: dict) -> str | None:
        return None if (e.get("seconds") or 0) < 1 else f"    ({e.get('stage')}: {e['seconds']:.1f}s)"

    def _step(self, e: dict) -> str:
        status = e.get("status", "?")
        kind = "handler " if e.get("handler") else ""
        text = f"  {self.paint(status, f'{status:<8}')} [{e.get('index')}] {kind}{e.get('step')} ({e.get('module')})"
        text += f"  {e.get('seconds', 0):.2f}s"
        if e.get("note"):
            text += f"  ({e['note']})"
        if status == "failed":
            text += f"\n           {e.get('source', '')}: {e.get('error', '')}"
            text = text.replace("\n", "\n           ").replace("\n           " * 2, "\n           ")
        if e.get("diff"):
            text += "\n" + _indent(_diff_text(e["diff"]), 11)
        return text

    def _check(self, e: dict) -> str:
        status = e.get("status", "?")
        text = f"  {self.paint(status, f'{status:<8}')} {e.get('check')}"
        if status == "failed":
            text += f"\n           {e.get('source', '')}: saw {e.get('observed')}"
        return text

    def _recap(self, e: dict) -> str:
        counts = " ".join(f"{k}={e.get(k, 0)}" for k in ("ok", "changed", "failed", "skipped", "ignored"))
        result = self.paint("ok" if e.get("result") == "ok" else "failed", str(e.get("result")))
        return (f"\nRECAP {e.get('role', '')} : {counts} checks_passed={e.get('checks_passed', 0)}"
                f" version={e.get('version')} result={result}")

    def _timings(self, e: dict) -> str:
        parts = [f"{k.replace('_', ' ')} {v:.2f}s" for k, v in e.items() if isinstance(v, float)]
        return "      time: " + ", ".join(parts)


def _indent(text: str, width: int) -> str:
    return "\n".join(" " * width + line for line in text.splitlines())


def _diff_text(diff: Any) -> str:
    if isinstance(diff, list):
        return "\n".join(_diff_text(d) for d in diff)
    if isinstance(diff, dict):
        if "unified" in diff:
            return str(diff["unified"]).rstrip()
        if "before" in diff or "after" in diff:
            return f"{diff.get('before')!r} -> {diff.get('after')!r}"
    return str(diff)


def configure(json_output: bool | None = None, level: int = logging.INFO) -> None:
    renderer: Any
    if wants_json(json_output):
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = TerminalRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            REDACT,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
