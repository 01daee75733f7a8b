"""Image versions: ``YYYYMMDD.N``, N counting up per role per UTC day from 1."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

VERSION_RE = re.compile(r"^(\d{8})\.(\d+)$")


def today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d")


def next_version(existing: Iterable[str], day: str | None = None) -> str:
    """The first version of ``day`` above every existing one of that day."""
    day = day or today()
    used = [int(m.group(2)) for v in existing if (m := VERSION_RE.match(v)) and m.group(1) == day]
    return f"{day}.{max(used, default=0) + 1}"


def sort_key(version: str) -> tuple[int, int]:
    m = VERSION_RE.match(version)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)
