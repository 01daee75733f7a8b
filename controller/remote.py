"""What the controller runs on the box: the transfer of the agent and the bundle, and the agent's commands.

Every agent run is one exec of :data:`BOOTSTRAP` (``python3 -I -S -c``), which takes what the
controller sends on stdin (the bundle, and the agent only when the box does not have
it), checks the agent on the box against the controller's sha256 before running any of
it, and runs the agent in the same process. The box keeps the agent between runs
(``/var/lib/kiln/agent.pyz``) and a byte-compiled copy of it; a copy whose sha256 is not
the controller's is never run (the source is re-sent or re-compiled instead). Everything
lives in /var/lib/kiln, which the clean stage removes: none of it reaches an image.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib.util
import io
import json
import logging
import marshal
import secrets
import shlex
import sys
import threading
import time
import weakref
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from kiln.agent.protocol import Event, StepStatus, parse_line
from kiln.agent.warm import proof
from kiln.controller.context import BakeContext
from kiln.controller.pipeline import BakeFailed

if TYPE_CHECKING:  # at run time, imported where used: the bake's start does not wait for paramiko (bake.py)
    from kiln.controller.ssh import Completed, Deadline

log = structlog.get_logger("kiln.agent")

RUN_DIR = "/var/lib/kiln"
AGENT = f"{RUN_DIR}/agent.pyz"
BUNDLE = f"{RUN_DIR}/bundle"
#: The agent's python: isolated (no PYTHON* variables, no user site) and without ``site`` (no dist-packages, no
#: ``.pth`` hooks or sitecustomize): the agent is stdlib-only and runs only code the controller sent and checked,
#: not what a role installed; and python starts in about half the time (20 -> 8 ms on Debian 12, idle).
PYTHON_FLAGS = "-I -S"
#: The bootstrap's exit status when the box has no agent with the controller's sha256 (nothing ran).
EXIT_NEED_AGENT = 10

#: Runs on the box (Python >= 3.9, stdlib): unpack stdin, check the agent by sha256, run it in-process.
BOOTSTRAP = r"""
import hashlib, json, marshal, os, shutil, sys, zlib  # zipfile (~6 ms) only where a box compiles the agent
RUN = "/var/lib/kiln"
AGENT = RUN + "/agent.pyz"
COMPILED_ENTRY = "agent-compiled."
KEEP_COMPILED = 3
def say(event):
    sys.stdout.write(json.dumps(event) + "\n"); sys.stdout.flush()
def sha(data):
    return hashlib.sha256(data).hexdigest()
def read(path):
    try:
        with open(path, "rb") as handle: return handle.read()
    except OSError: return b""
def put(path, data):
    os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
    tmp = path + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle: handle.write(data)
    os.replace(tmp, path)
def unpack(payload, compiled):
    head, _, body = payload.partition(b"\n")
    head = json.loads(head)
    if head.get("bundle"):
        shutil.rmtree(RUN + "/bundle", ignore_errors=True)
    at = 0
    for name, size, packed in head["files"]:
        parts = name.split("/")
        data = body[at:at + size]; at += size
        if packed: data = zlib.decompress(data)
        if name.startswith(COMPILED_ENTRY):  # the controller's byte code: kept only for this python's cache tag
            if name == COMPILED_ENTRY + sys.implementation.cache_tag:
                put(compiled, data); prune(compiled)
            continue
        if name.startswith("/") or ".." in parts or not (name == "agent.pyz" or parts[0] == "bundle"):
            raise SystemExit("refusing payload entry " + name)
        put(RUN + "/" + name, data)
def compiled_copy(source, path):
    import importlib.util, io, zipfile
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(source)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in sorted(src.infolist(), key=lambda i: i.filename):
            data = src.read(info)
            name = info.filename
            if name.endswith(".py") and name != "__main__.py":
                code = compile(data, AGENT + "/" + name, "exec", dont_inherit=True)
                data = importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code)
                name += "c"
            entry = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            dst.writestr(entry, data)
    put(path, out.getvalue()); prune(path)
    return sha(out.getvalue())
def prune(kept):  # a kept box gets a compiled copy per agent version: the newest few stay
    try:
        copies = [RUN + "/" + n for n in os.listdir(RUN) if n.startswith("agent-") and n.endswith(".zip")]
        copies.sort(key=os.path.getmtime, reverse=True)
        for path in copies[KEEP_COMPILED:]:
            if path != kept: os.unlink(path)
    except OSError: pass
want = json.loads(sys.argv[1])
os.umask(0o077)
os.makedirs(RUN, 0o700, exist_ok=True)
compiled = "%s/agent-%s.%s.zip" % (RUN, want["agent"][:32], sys.implementation.cache_tag)
size = int(sys.stdin.buffer.readline() or 0)  # what follows the payload is the agent's (serve)
if size:
    unpack(sys.stdin.buffer.read(size), compiled)
run_from = compiled  # byte code of this agent (its name) with the sha256 the controller named: no source needed
if not want.get("compiled") or sha(read(compiled)) != want["compiled"]:
    source = read(AGENT)
    if sha(source) != want["agent"]:
        say({"event": "need_agent", "had": sha(source) if source else ""})
        sys.exit(10)
    if not want.get("compile", True):
        run_from = AGENT
    else:
        try:
            say({"event": "agent_compiled", "sha256": compiled_copy(source, compiled)})
        except Exception as exc:
            say({"event": "agent_not_compiled", "error": repr(exc)}); run_from = AGENT
sys.path.insert(0, run_from)
os.umask(0o022)  # the role runs with root's umask, as Ansible's modules do; only the bootstrap's own files are private
sys.argv = [AGENT] + want["args"]
from agent.__main__ import main
sys.exit(main(want["args"]))
"""


@dataclass
class BoxAgent:
    """What the controller knows of one box's copy of the agent (it is checked on the box every run)."""

    sha256: str
    compiled: str = ""  # sha256 of the byte-compiled copy the box reported last
    sent: bool = False  # the box was sent this agent (a bake's push; a dev instance's earlier converge)
    #: byte-compile the whole agent on the box, once, for its later runs: worth it on a kept machine; a bake's
    #: machines run it two or three times, and compiling it all (~150 ms) costs more than the modules they import
    compile: bool = True
    pending: bytes | None = None  # what the next agent run carries on stdin (the bundle)
    bytes_sent: int = 0
    round_trips: int = 0
    #: the bake's stages after the apply that run in the apply's exec (set by the bake's push stage)
    later_parts: list[str] = field(default_factory=list)
    #: later stages' parts that ran in an earlier exec (the apply's), by stage name, for those stages to report
    done_parts: dict[str, Any] = field(default_factory=dict)
    #: the installed packages an agent run reported last (the apply's, ``--packages``), for the clean stage
    packages: dict[str, str] | None = None
    #: what the apply set (its run-vars.json), reported with those packages, for the image's checks
    run_variables: bytes | None = None
    #: seconds of idleness the warm agent a converge's apply leaves on its kept machine may live (0: none)
    linger: float = 0.0
    #: the warm agent to try before an exec ({"port", "token"}, from the dev state); None once it did not answer
    warm: dict[str, Any] | None = None
    #: the warm agent this command's apply left on the box, for the dev state
    left_warm: dict[str, Any] | None = None
    #: how the last agent run reached the box: "exec" or "warm agent"
    via: str = ""


_BOXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BOXES_LOCK = threading.Lock()


def box_agent(ctx: BakeContext) -> BoxAgent:
    """The agent state of ``ctx``'s machine, for as long as its SSH session lives."""
    from kiln.controller.agent_build import agent_sha256

    with _BOXES_LOCK:
        state = _BOXES.get(ctx.session)
        if state is None:
            state = _BOXES[ctx.session] = BoxAgent(agent_sha256())
        return state


def bundle_payload(
    bundle: dict[str, Any],
    checks: list[dict[str, Any]],
    files: dict[str, bytes],
    agent: bytes | None = None,
    build_checks: list[dict[str, Any]] | None = None,
    byte_code: dict[str, bytes] | None = None,
) -> bytes:
    """The bundle (and the agent, when given) in the bootstrap's format: one zlib stream.

    ``build_checks``: the checks the build machine runs, when they are not all of ``checks``; ``byte_code``: the
    agent compiled by the controller (:func:`byte_code_for`)."""
    entries = {
        **(byte_code or {}),
        "bundle/bundle.json": json.dumps(bundle).encode(),
        "bundle/checks.json": json.dumps(checks).encode(),
    }
    if build_checks is not None:
        entries["bundle/checks.build.json"] = json.dumps(build_checks).encode()
    entries.update({f"bundle/{path}": data for path, data in sorted(files.items())})
    return payload_of(entries, agent, bundle=True)


def payload_of(entries: dict[str, bytes], agent: bytes | None, bundle: bool) -> bytes:
    """The bootstrap's format: a JSON line naming each entry, its size and whether it is zlib-compressed, then the
    entries. The agent and its byte code go as they are (zips of deflated members, :func:`compile_zipapp`): the box
    writes them without inflating ~2 MB first, and python inflates only the modules a run imports."""
    if agent is not None:
        entries = {"agent.pyz": agent, **entries}
    packed = {name: not is_zip(name) for name in entries}
    data = {name: zlib.compress(body, 1) if packed[name] else body for name, body in entries.items()}
    head = json.dumps({"bundle": bundle, "files": [[name, len(body), packed[name]] for name, body in data.items()]})
    return head.encode() + b"\n" + b"".join(data.values())


def is_zip(entry: str) -> bool:
    """Whether a payload entry is one of the agent's zips (already compressed, member by member)."""
    return entry == "agent.pyz" or entry.startswith(COMPILED_ENTRY)


def payload_entries(payload: bytes) -> tuple[dict[str, bytes], bool]:
    """The entries of a payload (:func:`payload_of`), as they were given, and whether it carries a bundle."""
    head, _, body = payload.partition(b"\n")
    meta = json.loads(head)
    entries, at = {}, 0
    for name, size, packed in meta["files"]:
        data, at = body[at : at + size], at + size
        entries[name] = zlib.decompress(data) if packed else data
    return entries, meta["bundle"]


def with_agent(payload: bytes | None) -> bytes:
    """``payload`` (or nothing) with the agent added: what is sent again when the box lacks it."""
    from kiln.controller.agent_build import agent_zipapp

    if payload is None:
        return payload_of({}, agent_zipapp(), bundle=False)
    entries, bundle = payload_entries(payload)
    return payload_of(entries, agent_zipapp(), bundle=bundle)


@dataclass
class FreshPayload:
    """A new machine's first and only transfer: the agent, its byte code (:func:`byte_code_for`) and the bundle."""

    payload: bytes
    #: sha256 of the byte code it carries ("": none), which the box is told to run (``BoxAgent.compiled``)
    compiled: str


def fresh_payload(
    bundle: dict[str, Any],
    checks: list[dict[str, Any]],
    files: dict[str, bytes],
    build_checks: list[dict[str, Any]] | None = None,
    python: str = "",
) -> FreshPayload:
    """The payload of a box that was never sent the agent. It needs no machine: a bake makes it while the machine
    boots (controller/stages/connect.py ``WhileBooting``).

    ``python``: the box's python version when known (the test machine runs the build machine's image): when it
    runs the controller's byte code, the agent's source stays behind (~0.33 MB less; a box that cannot use the
    byte code asks for the source, and is sent it: :func:`run_agent`)."""
    from kiln.controller.agent_build import agent_zipapp

    byte_code, compiled = controller_byte_code()
    source = None if byte_code and runs_our_byte_code(python) else agent_zipapp()
    payload = bundle_payload(bundle, checks, files, source, build_checks=build_checks, byte_code=byte_code)
    return FreshPayload(payload, compiled)


def known_python(base_id: str) -> str:
    """The python version a machine of the base image ``base_id`` reported in an earlier bake ("": none known). An
    image's id names its content, so its python does not change: a build machine's payload then leaves the agent's
    source behind when that python runs the controller's byte code (:func:`fresh_payload`)."""
    from kiln.controller.agent_build import cache_dir

    if not base_id:
        return ""
    path = cache_dir() / "bases" / f"{digest(base_id.encode())[:32]}.python"
    try:
        version = path.read_text()
        return version if path.with_suffix(".sha256").read_text().strip() == digest(version.encode()) else ""
    except (OSError, UnicodeDecodeError):
        return ""


def remember_python(base_id: str, facts: dict[str, Any]) -> None:
    """Keep what python the base image ``base_id`` has, as a machine of it reported in its facts (CPython only)."""
    from kiln.controller.agent_build import cache_dir, store_whole

    version = str(facts.get("python_version", ""))
    implementation = (facts.get("ansible") or {}).get("python", {}).get("type", "")
    if not base_id or not version or implementation != "cpython" or known_python(base_id) == version:
        return
    path = cache_dir() / "bases" / f"{digest(base_id.encode())[:32]}.python"
    store_whole(path, version.encode(), path.with_suffix(".sha256"), digest(version.encode()))


def runs_our_byte_code(python_version: str) -> bool:
    """Whether a box whose python is ``python_version`` ("3.11.2"; "": unknown) runs this python's byte code."""
    if sys.implementation.name != "cpython":
        return False
    return python_version.split(".")[:2] == [str(part) for part in sys.version_info[:2]]


#: the payload entry of the agent's byte code, named for the python that compiled it (the bootstrap's COMPILED_ENTRY)
COMPILED_ENTRY = "agent-compiled."


def byte_code_for(box: BoxAgent) -> dict[str, bytes]:
    """The agent compiled by the controller's python, as a payload entry, and ``box`` told to run it.

    A machine that runs the agent once (a bake's build and test machines) would otherwise compile what it imports
    from source, each time (~0.3 s: the runner, Jinja2, the modules). The box keeps the entry only when its python's
    cache tag is the controller's, and runs it only when its sha256 is the one the command names (as any compiled
    copy); else it runs the source. Nothing (and the box compiles as before) when this python cannot compile it."""
    entry, compiled = controller_byte_code()
    if entry:
        box.compiled = compiled
    return entry


def controller_byte_code() -> tuple[dict[str, bytes], str]:
    """The payload entry of the agent's byte code (:func:`controller_compiled`) and its sha256; ({}, "") when this
    python cannot compile it."""
    try:
        data = controller_compiled()
    except (OSError, SyntaxError, ValueError) as exc:
        log.info("agent not compiled here; the box runs its source", error=str(exc))
        return {}, ""
    return {COMPILED_ENTRY + sys.implementation.cache_tag: data}, digest(data)


@functools.lru_cache(maxsize=1)
def controller_compiled() -> bytes:
    """The agent zipapp compiled by this python, as the bootstrap's ``compiled_copy`` makes it on a box (which stores
    its members: it reads them again, it does not send them); kept in kiln's cache by the agent's sha256 and the
    cache tag (compiling it takes ~0.5 s)."""
    from kiln.controller.agent_build import agent_sha256, agent_zipapp, cache_dir, store_whole

    sha = agent_sha256()
    path = cache_dir() / "agent" / f"compiled-{sha[:32]}.{sys.implementation.cache_tag}.deflated.zip"
    try:
        stored = path.read_bytes()
        if path.with_suffix(".sha256").read_text().strip() == digest(stored):
            return stored
    except OSError:
        pass
    data = compile_zipapp(agent_zipapp())
    store_whole(path, data, path.with_suffix(".sha256"), digest(data))
    return data


def compile_zipapp(source: bytes) -> bytes:
    """Every module of the zipapp as byte code (``__main__.py`` stays source), in a zip of fixed timestamps whose
    members are deflated (1.7 MB stored, 0.7 MB so): python inflates a module when a run imports it."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(source)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in sorted(src.infolist(), key=lambda i: i.filename):
            data, name = src.read(info), info.filename
            if name.endswith(".py") and name != "__main__.py":
                code = compile(data, f"{AGENT}/{name}", "exec", dont_inherit=True)
                data, name = importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code), name + "c"
            dst.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return out.getvalue()


def framed(payload: bytes | None) -> bytes | None:
    """The payload as the bootstrap reads it: its length on a line, then its bytes."""
    return None if not payload else f"{len(payload)}\n".encode() + payload


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def as_root(ctx: BakeContext, command: str) -> str:
    if ctx.instance.ssh_user == "root":
        return command
    return f"sudo -n sh -c {shlex.quote(command)}"


class AgentCommand(str):
    """The command line of one agent run, which also knows the agent's own arguments (a warm agent takes those)."""

    args: tuple[str, ...] = ()


def agent_command(ctx: BakeContext, *args: str) -> str:
    """One run of the agent with ``args``, through the bootstrap (which checks the agent's sha256 first)."""
    box = box_agent(ctx)
    # a one-off verify (the test machine, `invoke verify`) uses a compiled copy the box has, never makes one
    compile_it = box.compile and args[:1] != ("verify",)
    run_args = [*args, *linger_args(box, args)]
    want = json.dumps({"agent": box.sha256, "compiled": box.compiled, "compile": compile_it, "args": run_args})
    command = AgentCommand(as_root(ctx, f"python3 {PYTHON_FLAGS} -c {shlex.quote(BOOTSTRAP)} {shlex.quote(want)}"))
    command.args = args
    return command


def linger_args(box: BoxAgent, args: tuple[str, ...]) -> list[str]:
    """An apply on a kept machine leaves a warm agent for the next converge (agent/warm.py)."""
    return ["--linger", f"{box.linger:g}"] if box.linger > 0 and warm_runs(args) and args[0] == "apply" else []


def warm_runs(args: tuple[str, ...]) -> bool:
    """Whether a warm agent may run this command: an apply or a verify (a resume follows a reboot: a fresh exec)."""
    return args[:1] in (("apply",), ("verify",)) and "--resume" not in args


#: the transport's events, not the agent run's: the bootstrap's, and a warm agent's
BOOTSTRAP_EVENTS = (
    Event.NEED_AGENT,
    Event.AGENT_COMPILED,
    Event.AGENT_NOT_COMPILED,
    Event.WARM,
    Event.EXIT,
)


class RunLost(BakeFailed):
    """An agent run broke off (its time bound passed, the machine stopped answering) in ``phase``
    ("" for the run's first part, else the name of the part the agent announced last)."""

    def __init__(self, message: str, phase: str) -> None:
        super().__init__(message)
        self.phase = phase


def run_agent(
    ctx: BakeContext,
    command: str,
    on_event: Callable[[dict[str, Any]], None],
    stdin: bytes | None = None,
    timeout: float | None = None,
    phase_bounds: dict[str, float] | None = None,
    repeat_limits: dict[int, float] | None = None,
) -> tuple[int, list[dict[str, Any]], str]:
    """Run a command printing agent events; hand each to ``on_event`` as it arrives.

    Without ``stdin``, the run carries what was staged for the box (:func:`stage_bundle`).
    When the box has no agent with the controller's sha256, nothing ran: the agent is sent
    and the command runs again (once). ``timeout`` bounds each run, and a run of several
    parts (``phase`` events) gets the bound ``phase_bounds`` names for each part from the
    moment it begins; a step of ``repeat_limits`` (index: limit) that starts again in a part (the next item
    of an include loop) adds its limit to the bound. When a bound passes, or the machine stops answering, the bake fails
    (:class:`RunLost`) saying which part and step were running and that the rest is lost.
    """
    box = box_agent(ctx)
    bounds = Bounds(phase_bounds or {}, LoopAllowance(repeat_limits or {}))
    if stdin is None and box.pending is not None:
        stdin, box.pending = box.pending, None
    args = getattr(command, "args", ())
    if box.warm is not None and warm_runs(args):
        try:
            rc, events, stderr = _run_once(ctx, box, command, on_event, stdin, timeout, bounds, warm=True)
        except WarmUnavailable as exc:
            log.info("warm agent not used; a fresh run instead", reason=str(exc))
            box.warm = None
        else:
            if done_without_events(rc, events):
                raise BakeFailed(f"the warm agent did not run (exit {rc}): {stderr.strip()[-1500:]}")
            box.via = "warm agent"
            return rc, [e for e in events if e.get("event") not in BOOTSTRAP_EVENTS], stderr
    rc, events, stderr = _run_once(ctx, box, command, on_event, stdin, timeout, bounds)
    if rc == EXIT_NEED_AGENT and any(e.get("event") == Event.NEED_AGENT for e in events):
        log.info("agent sent", reason="the box had no copy with this sha256", sha256=box.sha256[:16])
        rc, events, stderr = _run_once(ctx, box, command, on_event, with_agent(stdin), timeout, bounds)
        if rc == EXIT_NEED_AGENT:
            raise BakeFailed(f"the agent sent to the box does not have sha256 {box.sha256}: it was damaged on the way")
    if done_without_events(rc, events):
        raise BakeFailed(f"agent did not run (exit {rc}): {stderr.strip()[-1500:]}")
    box.sent = True
    box.via = "exec"
    return rc, [e for e in events if e.get("event") not in BOOTSTRAP_EVENTS], stderr


def done_without_events(rc: int, events: list[dict[str, Any]]) -> bool:
    return rc != 0 and not [e for e in events if e.get("event") not in BOOTSTRAP_EVENTS]


class LoopAllowance:
    """Seconds a run's bound grows by as it goes: a step inside an include loop runs once per item, a count only
    the box knows, so each time it starts again within a part (the next item) its limit (``limits``, index:
    seconds) is added."""

    def __init__(self, limits: dict[int, float]) -> None:
        self.limits = limits
        self.started: set[int] = set()

    def extra(self, event: dict[str, Any]) -> float:
        if event.get("event") == Event.PHASE:
            self.started.clear()
        if event.get("event") != Event.START or event.get("index") not in self.limits:
            return 0.0
        again = event["index"] in self.started
        self.started.add(event["index"])
        return self.limits[event["index"]] if again else 0.0


@dataclass
class Bounds:
    """How a run's time bound changes as it goes: restarted for each part (``phase``: seconds), grown by
    ``loops``."""

    phase: dict[str, float]
    loops: LoopAllowance


def _run_once(
    ctx: BakeContext,
    box: BoxAgent,
    command: str,
    on_event: Callable[[dict[str, Any]], None],
    stdin: bytes | None,
    timeout: float | None,
    bounds: Bounds,
    warm: bool = False,
) -> tuple[int, list[dict[str, Any]], str]:
    """One run: an exec of the bootstrap, or with ``warm`` the warm agent's (WarmUnavailable: nothing was sent)."""
    from kiln.controller.ssh import CommandTimeout, ConnectionLost, Deadline

    events: list[dict[str, Any]] = []
    deadline = None if timeout is None else Deadline(timeout)
    part = {"phase": "", "started": time.monotonic(), "first": 0}

    def on_line(line: str) -> None:
        if not line.startswith("{"):
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        events.append(event)
        if event.get("event") == Event.AGENT_COMPILED:
            box.compiled = event.get("sha256", "")
        elif event.get("event") == Event.WARM:
            box.left_warm = {"port": event.get("port"), "token": event.get("token")}
        elif event.get("event") == Event.FACTS:
            ctx.facts = event["facts"]
        elif event.get("event") == Event.PACKAGES:
            box.packages = event["packages"]
            if "run_variables" in event:
                box.run_variables = str(event["run_variables"]).encode()
        elif event.get("event") == Event.PHASE:  # the next part of the run: its own bound from now
            part.update(phase=event.get("phase", ""), started=time.monotonic(), first=len(events))
            if deadline is not None and part["phase"] in bounds.phase:
                deadline.restart(bounds.phase[part["phase"]])
        if deadline is not None:
            deadline.extend(bounds.loops.extra(event))
        if event.get("event") not in BOOTSTRAP_EVENTS:
            on_event(event)

    try:
        if warm:
            done = warm_run(ctx, box, getattr(command, "args", ()), stdin, on_line, deadline)
        else:
            box.round_trips += 1
            box.bytes_sent += len(stdin or b"")
            done = ctx.session.run(command, stdin=framed(stdin), on_line=on_line, timeout=deadline)
    except CommandTimeout as exc:
        which = f"the {part['phase']} " if part["phase"] else ""
        raise RunLost(
            f"the agent did not finish {which}within {deadline.seconds:.0f}s (the steps' time limits and a margin); "
            f"{what_was_lost(events[part['first'] :], part['started'], part['phase'] == 'verify')}",
            part["phase"],
        ) from exc
    except ConnectionLost as exc:
        where = f"in the {part['phase']}: " if part["phase"] else ""
        lost = what_was_lost(events[part["first"] :], part["started"], part["phase"] == "verify")
        raise RunLost(f"{exc}; {where}{lost}", part["phase"]) from exc
    return done.rc, events, done.stderr


class _QuietRefusal(logging.Filter):
    """paramiko logs a refused channel as an error on stderr; for a warm agent that is gone, kiln says it itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open FAILED" not in record.getMessage()


class WarmUnavailable(Exception):
    """The warm agent did not answer, or did not prove it holds the token: it was sent nothing."""


#: Seconds a warm agent may take to open its channel and prove its token.
WARM_HANDSHAKE_SECONDS = 5.0


def warm_run(
    ctx: BakeContext,
    box: BoxAgent,
    args: tuple[str, ...],
    payload: bytes | None,
    on_line: Callable[[str], None],
    deadline: Deadline | None,
) -> Completed:
    """One run of the agent by the warm agent a converge left (agent/warm.py), through the SSH connection.

    It proves the token first; only then is it sent the request. A run that ends before any output (the
    warm agent went away in between) is WarmUnavailable too: the caller runs it afresh."""
    from paramiko import SSHException

    quiet = logging.getLogger("paramiko.transport")
    if not any(isinstance(f, _QuietRefusal) for f in quiet.filters):
        quiet.addFilter(_QuietRefusal())
    reply = b""
    try:
        chan = ctx.session.conn.client.get_transport().open_channel(
            "direct-tcpip", ("127.0.0.1", int(box.warm["port"])), ("127.0.0.1", 0), timeout=WARM_HANDSHAKE_SECONDS
        )
    except (OSError, EOFError, SSHException, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise WarmUnavailable(f"no warm agent at its port ({exc or type(exc).__name__})") from exc
    try:
        chan.settimeout(WARM_HANDSHAKE_SECONDS)
        nonce = secrets.token_hex(16)
        chan.sendall(json.dumps({"nonce": nonce}).encode() + b"\n")
        line, reply = _read_line(chan, reply)
        answer = json.loads(line)
        token = str(box.warm["token"])
        if not hmac.compare_digest(str(answer.get("proof", "")), proof(token, "agent", nonce)):
            raise WarmUnavailable("what answered at the warm agent's port does not hold its token")
        request = {"proof": proof(token, "controller", str(answer["nonce"])), "args": list(args)}
        chan.sendall(json.dumps({**request, "size": len(payload or b"")}).encode() + b"\n" + (payload or b""))
    except WarmUnavailable:
        chan.close()
        raise
    except (OSError, EOFError, SSHException, ValueError, KeyError, TypeError, AttributeError) as exc:
        chan.close()
        raise WarmUnavailable(f"the warm agent did not answer ({exc or type(exc).__name__})") from exc
    box.round_trips += 1
    box.bytes_sent += len(payload or b"")
    try:
        return _warm_output(ctx, chan, reply, on_line, deadline)
    finally:
        chan.close()


def _read_line(chan: Any, buffer: bytes) -> tuple[bytes, bytes]:
    """One line from ``chan`` (within its timeout), and what came after it."""
    while b"\n" not in buffer:
        data = chan.recv(65536)
        if not data:
            raise EOFError("the warm agent closed the connection")
        buffer += data
    line, _, rest = buffer.partition(b"\n")
    return line, rest


def _warm_output(
    ctx: BakeContext, chan: Any, buffer: bytes, on_line: Callable[[str], None], deadline: Deadline | None
) -> Completed:
    """The run's lines, each to ``on_line``, up to the warm agent's ``exit`` event (its exit status)."""
    from kiln.controller.ssh import POLL_SECONDS, Completed, ConnectionLost

    chan.settimeout(POLL_SECONDS)
    lines: list[str] = []
    end: dict[str, Any] | None = None
    while end is None:
        while b"\n" in buffer and end is None:
            raw, buffer = buffer.split(b"\n", 1)
            line = raw.decode(errors="replace")
            event = parse_line(line)
            if event is not None and event.get("event") == Event.EXIT:
                end = event
                break
            lines.append(line)
            on_line(line)
        if end is not None:
            break
        try:
            data = chan.recv(65536)
        except TimeoutError:
            ctx.session._check_deadline(deadline)
            continue
        if not data:
            if not lines:
                raise WarmUnavailable("the warm agent went away before it ran anything")
            ctx.session._check_alive()
            raise ConnectionLost("the warm agent's connection closed in the middle of the run")
        buffer += data
    return Completed(int(end.get("rc", 1)), "\n".join(lines), str(end.get("stderr", "")))


def stage_bundle(ctx: BakeContext, bundle: dict[str, Any]) -> int:
    """Stage the bundle for the next agent run (push and apply in one exec); returns its size in bytes.

    The agent rides along only when the box was never sent it; a box that lost or changed its copy says so and is
    sent it again (see :func:`run_agent`). A bake's new machines get :func:`fresh_payload` instead.
    """
    from kiln.controller.agent_build import agent_zipapp

    box = box_agent(ctx)
    checks = ctx.compiled.checks
    build = [check for check in checks if check.get("on", "both") in ("both", "build")]
    box.pending = bundle_payload(
        bundle,
        checks,
        ctx.compiled.files,
        None if box.sent else agent_zipapp(),
        build_checks=build if len(build) != len(checks) else None,
    )
    return len(box.pending)


def what_was_lost(events: list[dict[str, Any]], started: float, checks: bool = False) -> str:
    """The agent's run as far as the controller saw it: the step it was in, and what did not report."""
    finished = sum(1 for e in events if e.get("event") == Event.STEP)
    checked = sum(1 for e in events if e.get("event") == Event.CHECK)
    running = running_step(events)
    seconds = time.monotonic() - started
    if running is not None:
        return (
            f"lost step {running.get('index')} '{running.get('name')}' while it ran, and every step after it "
            f"({finished} steps had reported, {seconds:.0f}s into the run)"
        )
    reported = f"{checked} checks" if checked or checks else f"{finished} steps"
    return f"lost the rest of the run ({reported} had reported, {seconds:.0f}s into the run)"


def running_step(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last step the agent announced and has not reported on."""
    for event in reversed(events):
        if event.get("event") in (Event.STEP, Event.SUMMARY):
            return None
        if event.get("event") == Event.START:
            return event
    return None


def log_step(event: dict[str, Any], quiet_ok: bool = False, check_mode: bool = False) -> None:
    """One agent step event as one log line (``start`` events only at debug level)."""
    if event.get("event") == Event.START:
        log.debug("start", index=event.get("index"), step=event.get("name"), module=event.get("module"))
        return
    if event.get("event") != Event.STEP:
        return
    status = event.get("status")
    if quiet_ok and status in (StepStatus.OK, StepStatus.SKIPPED):
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
        if status == StepStatus.CHANGED and event.get("msg"):
            fields["msg"] = event["msg"]
    if event.get("predicted") is False:
        fields["predicted"] = False
        fields["note"] = "check mode cannot predict this step"
    if event.get("rescued"):
        fields["note"] = "rescued"
    if event.get("ignored"):
        fields["note"] = "ignored"
    if status == StepStatus.FAILED:
        fields["error"] = event.get("msg")
        fields["source"] = event.get("source")
        (log.warning if event.get("ignored") or event.get("rescued") else log.error)("step", **fields)
    else:
        if event.get("diff") and event.get("diff_shown"):
            fields["diff"] = event["diff"]
        log.info("step", **fields)
