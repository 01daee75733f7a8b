"""structlog set up once: a readable console on a terminal, JSON lines with --json or in CI."""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

import structlog


def wants_json(flag: bool | None = None) -> bool:
    if flag is not None and flag:
        return True
    return bool(os.environ.get("KILN_JSON") or os.environ.get("CI"))


class Redact:
    """Replace secret values (from no_log steps) in every rendered field, nested ones too.

    Values shorter than ``MIN_LENGTH`` are left alone: redacting every "yes" or "80"
    in the log would hide everything and protect nothing.
    """

    MIN_LENGTH = 4
    MASK = "<redacted>"

    def __init__(self, secrets: list[str] | None = None) -> None:
        self.secrets = list(secrets or [])

    @property
    def secrets(self) -> list[str]:
        return self._secrets

    @secrets.setter
    def secrets(self, values: list[str]) -> None:
        # longest first: a secret that contains another is masked whole
        kept = {str(v) for v in values if v is not None and len(str(v)) >= self.MIN_LENGTH}
        self._secrets = sorted(kept, key=len, reverse=True)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, self.MASK)
            return value
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.scrub(v) for v in value]
        return value

    def __call__(self, logger: Any, method: str, event_dict: dict) -> dict:
        if not self._secrets:
            return event_dict
        return {key: self.scrub(value) for key, value in event_dict.items()}


REDACT = Redact()

STATUS_COLORS = {
    "ok": "\x1b[32m",
    "changed": "\x1b[33m",
    "failed": "\x1b[31m",
    "skipped": "\x1b[36m",
    "passed": "\x1b[32m",
}
RESET = "\x1b[0m"
QUIET_KEYS = ("timestamp", "level", "role", "build_id", "logger")


class TerminalRenderer:
    """A view a person follows: one line per stage, step and check, then a recap.

    Events it does not know fall through to structlog's ConsoleRenderer.
    """

    def __init__(self, colors: bool, prefix_roles: bool = False) -> None:
        self.colors = colors
        # several bakes at once (nightly): each line says which role it is about
        self.prefix_roles = prefix_roles

    def paint(self, status: str, text: str) -> str:
        return f"{STATUS_COLORS.get(status, '')}{text}{RESET}" if self.colors and status in STATUS_COLORS else text

    def __call__(self, logger: Any, method: str, event_dict: dict) -> str:
        role = event_dict.get("role")
        line = self._render(logger, method, event_dict)
        if self.prefix_roles and role and event_dict.get("event") != "role":
            return "\n".join(f"[{role}] {part}" for part in line.split("\n"))
        return line

    def _render(self, logger: Any, method: str, event_dict: dict) -> str:
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
        mode = " in check mode (nothing is changed or published)" if e.get("check_mode") else ""
        return (
            f"kiln: baking {e.get('role')} on {e.get('provider')}, build {e.get('build_id')}{mode} "
            f"(roles {e.get('chain')}; {e.get('steps')} steps, {e.get('checks')} checks)"
        )

    def _role(self, e: dict) -> str:
        """nightly: one role finished (baked, skipped, failed or locked)."""
        result = str(e.get("result"))
        status = {"baked": "changed", "skipped-unchanged": "ok", "failed": "failed"}.get(result, "skipped")
        versions = f"{e.get('old')} -> {e.get('new')}" if e.get("new") not in (None, "-") else str(e.get("old"))
        text = f"{self.paint(status, f'{result:<18}')} {e.get('role')}  {versions}  {e.get('seconds') or 0:.1f}s"
        return text + (f"\n    {e['error']}" if e.get("error") else "")

    def _stage(self, e: dict) -> str:
        return f"==> {e.get('stage')}"

    def _stage_done(self, e: dict) -> str | None:
        return None if (e.get("seconds") or 0) < 1 else f"    ({e.get('stage')}: {e['seconds']:.1f}s)"

    def _step(self, e: dict) -> str:
        status = e.get("status", "?")
        text = f"  {self.paint(status, f'{status:<8}')} {_step_label(e)}"
        text += f"  {e.get('seconds') or 0:.2f}s"
        if e.get("check_mode") and status == "changed":
            text += f"  ({_would(e)})"
        elif e.get("note"):
            text += f"  ({e['note']})"
        if status == "failed":
            text += "\n" + _indent(f"{e.get('source') or ''}: {e.get('error', '')}", 11)
        if e.get("diff"):
            text += "\n" + _indent(_diff_text(e["diff"]), 11)
        return text

    def _still_running(self, e: dict) -> str:
        return f"  {'...':<8} {_step_label(e)}  still running, {e.get('seconds', 0):.0f}s"

    def _rebooting(self, e: dict) -> str:
        return f"  {'reboot':<8} [{e.get('index')}] {e.get('step')}: rebooting the machine, then resuming"

    def _rebooted(self, e: dict) -> str:
        return f"  {'reboot':<8} [{e.get('index')}] back after {e.get('seconds', 0):.1f}s; resuming"

    def _check(self, e: dict) -> str:
        status = e.get("status", "?")
        text = f"  {self.paint(status, f'{status:<8}')} {e.get('check')}"
        if status == "failed":
            text += f"\n           {e.get('source', '')}: saw {e.get('observed')}"
        return text

    def _recap(self, e: dict) -> str:
        counts = " ".join(f"{k}={e.get(k, 0)}" for k in ("ok", "changed", "failed", "skipped", "ignored"))
        result = self.paint("ok" if e.get("result") == "ok" else "failed", str(e.get("result")))
        text = (
            f"\nRECAP {e.get('role', '')} : {counts} checks_passed={e.get('checks_passed', 0)}"
            f" version={e.get('version')} result={result}"
        )
        if e.get("check_mode"):
            text += "\n      check mode: 'changed' is what would change; nothing was changed or published"
        return text

    def _timings(self, e: dict) -> str:
        parts = [f"{k.replace('_', ' ')} {v:.2f}s" for k, v in e.items() if isinstance(v, float)]
        return "      time: " + ", ".join(parts)


def _step_label(e: dict) -> str:
    """``[index] step (module)``, with ``handler`` before a handler's name."""
    kind = "handler " if e.get("handler") else ""
    return f"[{e.get('index')}] {kind}{e.get('step')} ({e.get('module')})"


def _would(e: dict) -> str:
    """A check-mode step's note: what would change, or that the module cannot tell."""
    msg = re.sub(r"\s*\(check mode[^)]*\)\s*$", "", str(e.get("msg") or "")).strip()
    if e.get("predicted") is False:
        return f"cannot predict in check mode: {msg}" if msg else "cannot predict in check mode"
    if not msg:
        return "would change"
    return msg if msg.startswith("would ") else f"would change: {msg}"


def _indent(text: str, width: int) -> str:
    return "\n".join(" " * width + line for line in text.splitlines())


def _diff_text(diff: Any) -> str:
    """Unified diffs as they are; before/after as ``key: before -> after`` lines."""
    if isinstance(diff, list):
        return "\n".join(_diff_text(d) for d in diff)
    if isinstance(diff, dict):
        parts = []
        if "unified" in diff:
            parts.append(str(diff["unified"]).rstrip())
        if "before" in diff or "after" in diff:
            parts.append(_before_after(diff.get("before"), diff.get("after")))
        if parts:
            return "\n".join(p for p in parts if p)
    return str(diff)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items()) or "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return "absent" if value is None else str(value)


def _before_after(before: Any, after: Any) -> str:
    if isinstance(before, dict) and isinstance(after, dict):
        lines = [
            f"{key}: {_short(before.get(key))} -> {_short(after.get(key))}"
            for key in list(dict.fromkeys([*before, *after]))
            if before.get(key) != after.get(key)
        ]
        return "\n".join(lines)
    return f"{_short(before)} -> {_short(after)}"


def configure(json_output: bool | None = None, level: int = logging.INFO, prefix_roles: bool = False) -> None:
    renderer: Any
    if wants_json(json_output):
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = TerminalRenderer(colors=sys.stderr.isatty(), prefix_roles=prefix_roles)
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
