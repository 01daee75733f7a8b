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


def configure(json_output: bool | None = None, level: int = logging.INFO) -> None:
    renderer: Any
    if wants_json(json_output):
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
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
