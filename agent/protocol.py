"""The agent ↔ controller protocol: the events the agent prints, their statuses, and the module hooks.

One JSON object per line on the agent's stdout, each with an ``event`` key naming one of
:class:`Event`. The enums are ``str``-valued, so ``json.dumps`` writes exactly the strings the
controller has always read, and a parsed event compares equal to them
(``event["event"] == Event.STEP``). Both sides import this module: the agent (stdlib only,
Python >= 3.9, inside the zipapp) and the controller. docs/internals.md describes each event.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol


class Event(str, Enum):
    """What a line of the agent's output reports."""

    FACTS = "facts"  # {"facts": {...}}: the machine's facts, before anything is applied
    START = "start"  # a step begins: index, name, module, role
    STEP = "step"  # a step finished: index, name, status (StepStatus), msg, duration, ...
    SUMMARY = "summary"  # a part finished: counts per status, ok_run, changed_steps, ...
    REBOOT = "reboot"  # a step is rebooting the machine: index, name, timeout, msg (agent exits 3)
    CHECK = "check"  # a check finished: index, check, name, status (CheckStatus), observed, duration
    PACKAGES = "packages"  # {"packages": [...]}: the installed packages (``agent packages``)
    PHASE = "phase"  # the next part of ``apply --rerun --verify``: phase (Phase)
    READY = "ready"  # ``serve`` has loaded its modules and waits for bundles
    SERVED = "served"  # ``serve`` applied one bundle: id, exit
    WARM = "warm"  # ``apply --linger`` left a warm agent on the box: port, token (agent/warm.py)
    EXIT = "exit"  # a warm agent's run ended: rc (the exit status an exec would have had), stderr
    # said by the controller's bootstrap (controller/remote.py) before the agent runs
    NEED_AGENT = "need_agent"
    AGENT_COMPILED = "agent_compiled"
    AGENT_NOT_COMPILED = "agent_not_compiled"

    def __str__(self) -> str:
        return self.value


class StepStatus(str, Enum):
    OK = "ok"
    CHANGED = "changed"
    FAILED = "failed"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


class CheckStatus(str, Enum):
    PASSED = "passed"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class Phase(str, Enum):
    IDEMPOTENCE = "idempotence check"
    VERIFY = "verify"

    def __str__(self) -> str:
        return self.value


#: the agent's exit status: ok, a step or check failed, rebooting (run ``apply --resume`` after the boot)
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REBOOT = 3


def event(kind: Event, **fields: Any) -> Dict[str, Any]:
    """An event as the agent prints it: ``event`` first, then the fields."""
    return dict({"event": kind.value}, **fields)


def encode(message: Dict[str, Any]) -> str:
    """One line of the protocol (no newline)."""
    return json.dumps(message, default=str, sort_keys=False)


def parse_line(line: str) -> Optional[Dict[str, Any]]:
    """The event on this line, or None if the line is not one (shell output, a warning)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) and "event" in message else None


def parse_lines(text: str) -> List[Dict[str, Any]]:
    """Every event in ``text``, in order; other lines are skipped."""
    return [message for message in map(parse_line, text.splitlines()) if message is not None]


def first(events: Iterable[Dict[str, Any]], kind: Event) -> Optional[Dict[str, Any]]:
    """The first event of this kind, or None."""
    return next((e for e in events if e.get("event") == kind), None)


class Module(Protocol):
    """The hooks of an agent module (agent/modules/<name>.py).

    Every module has ``SCHEMA``, ``check`` and ``apply``. A module whose ``apply`` returns
    ``data={"reboot_requested": True, ...}`` (reboot) also has ``schedule`` and ``confirm``:
    the runner saves its state, calls ``schedule(result, ctx)`` and exits ``EXIT_REBOOT``;
    after the boot, ``apply --resume`` calls ``confirm(result, ctx)`` (it raises ModuleError
    if the machine did not reboot) and the run goes on with the next step. The running step
    is ``ctx.step`` for modules keyed on it.
    """

    SCHEMA: Dict[str, Any]

    def check(self, params: Dict[str, Any], ctx: Any) -> Dict[str, Any]: ...

    def apply(self, params: Dict[str, Any], state: Dict[str, Any], ctx: Any) -> Any: ...


class RebootingModule(Module, Protocol):
    def schedule(self, result: Dict[str, Any], ctx: Any) -> None: ...

    def confirm(self, result: Dict[str, Any], ctx: Any) -> str: ...


#: the result key with which a module asks the runner for a reboot (RebootingModule)
REBOOT_REQUESTED = "reboot_requested"

Emit = Callable[[Dict[str, Any]], None]
