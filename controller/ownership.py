"""Proof of ownership: which build (and which controller process) a resource belongs to.

A bake writes a :class:`BuildClaim` beside what it reserves or creates (its version
reservation, its build machine, its image before publish). After a crash (kill -9, a
lost machine) ``sweep`` reads the claims back: it removes a resource only when a claim
proves the resource is a build's and that build is over, and never anything else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import socket
from dataclasses import asdict, dataclass, field


def process_start_time(pid: int) -> str:
    """The kernel's start time of ``pid`` (clock ticks since boot); "" when there is no such process.

    A pid alone can be reused after the holder died; pid plus start time cannot.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return ""
    # field 22 (starttime), counted after the parenthesised command name, which may hold spaces
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass(frozen=True)
class BuildClaim:
    """Who holds a reservation or a temporary resource, and until when."""

    build_id: str
    expires: str  # ISO 8601, UTC: after this the resource may be swept even if the holder cannot be asked
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    pid_started: str = field(default_factory=lambda: process_start_time(os.getpid()))
    kept: bool = False  # kept for debugging (--keep-on-error): only the deadline ends it

    @classmethod
    def for_build(cls, build_id: str, expires: dt.datetime) -> BuildClaim:
        return cls(build_id=build_id, expires=expires.astimezone(dt.UTC).isoformat(timespec="seconds"))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BuildClaim | None:
        """The claim written by :meth:`to_json`; None for anything else (never raises)."""
        try:
            data = json.loads(text)
            return cls(
                build_id=str(data["build_id"]),
                expires=str(data["expires"]),
                host=str(data["host"]),
                pid=int(data["pid"]),
                pid_started=str(data.get("pid_started", "")),
                kept=bool(data.get("kept", False)),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def expired(self, now: dt.datetime | None = None) -> bool:
        try:
            deadline = dt.datetime.fromisoformat(self.expires.replace("Z", "+00:00"))
        except ValueError:
            return True  # an unreadable deadline is no reason to keep something forever
        if deadline.tzinfo is None:
            deadline = deadline.replace(tzinfo=dt.UTC)
        return deadline <= (now or dt.datetime.now(dt.UTC))

    def holder_alive(self) -> bool | None:
        """True/False when this host can tell (the holder ran here); None when it cannot."""
        if self.host != socket.gethostname():
            return None
        started = process_start_time(self.pid)
        return bool(started) and (not self.pid_started or started == self.pid_started)

    def over(self, now: dt.datetime | None = None) -> bool:
        """The build is provably over: its holder died on this host (and nobody kept the machine on
        purpose), or its deadline passed and no live holder on this host says otherwise."""
        if self.kept:
            return self.expired(now)
        alive = self.holder_alive()
        if alive is False:
            return True
        return alive is None and self.expired(now)

    def keep(self) -> BuildClaim:
        """The same claim, held by nobody: the machine stays for debugging until the deadline."""
        return dataclasses.replace(self, kept=True)

    def describe(self) -> str:
        return f"build {self.build_id} (pid {self.pid} on {self.host}, expires {self.expires})"
