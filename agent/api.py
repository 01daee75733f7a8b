"""What a module (or a check) is given and what it returns.

A module is one file in ``agent/modules/`` with:

- ``SCHEMA``: its declarative argument schema (see :mod:`agent.schema`);
- ``check(params, ctx) -> state``: read-only; reads the current state;
- ``apply(params, state, ctx) -> Result``: decides from ``state``, and changes the
  machine only when something differs and ``ctx.check_mode`` is off.

Modules raise :class:`ModuleError` for failures; they never exit or print.
Stdlib only, Python >= 3.9.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union


class ModuleError(Exception):
    """The module could not do what was asked; ``msg`` says why."""

    def __init__(self, msg: str, **data: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.data = data


class StepTimeout(BaseException):
    """The step ran past its time limit. A BaseException, so that no module's ``except Exception`` swallows it."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"timed out after {limit:g}s")
        self.limit = limit


class StepClock:
    """A step's time limit: what is left of it, and who noticed first that it ran out."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.ends = time.monotonic() + limit
        self.expired = False
        self.starting = False  # a command is being started: the alarm must not orphan it
        self.deferred = False  # the alarm rang while one was

    def left(self) -> float:
        return self.ends - time.monotonic()

    def ring(self) -> None:
        """The alarm: raise StepTimeout now, or (while a command starts) as soon as the command is owned."""
        if self.expired:
            return
        if self.starting:
            self.deferred = True
            return
        raise self.expire()

    def expire(self) -> StepTimeout:
        """Mark the limit as reached; the alarm backstop stays quiet once a command noticed it."""
        self.expired = True
        return StepTimeout(self.limit)


@dataclass
class Result:
    """The fixed result shape of every module."""

    changed: bool
    msg: str = ""
    diff: Dict[str, Any] | None = None  # {"before": ..., "after": ...} or {"unified": "..."}
    data: Dict[str, Any] = field(default_factory=dict)  # extra fields for `register`
    predicted: bool = True  # False: in check mode the module could not predict the outcome


@dataclass
class Completed:
    rc: int
    stdout: str
    stderr: str


@dataclass
class Context:
    """What a module may use: flags, the bundle's files, and a command runner."""

    check_mode: bool = False
    diff_mode: bool = False
    files_dir: str = "/"
    templates_dir: str = "/"
    facts: Dict[str, Any] = field(default_factory=dict)
    variables: Mapping[str, Any] = field(default_factory=dict)  # the step's variables (a Scope: rendered when read)
    clock: Optional[StepClock] = None  # the running step's time limit; every command stops at it
    environment: Dict[str, str] = field(default_factory=dict)  # the step's `environment:`, for its commands
    become_user: Optional[str] = None  # the step's `become_user:`: its commands run as that user
    step: Dict[str, Any] = field(default_factory=dict)  # the running step, for modules keyed on it (reboot)

    @contextlib.contextmanager
    def acting(
        self, check_mode: Optional[bool], environment: Dict[str, str], become_user: Optional[str]
    ) -> Iterator["Context"]:
        """One step's own check_mode, environment and become_user, for as long as it runs."""
        saved = (self.check_mode, self.environment, self.become_user)
        if check_mode is not None:
            self.check_mode = bool(check_mode)
        self.environment = environment
        self.become_user = become_user if become_user not in (None, "", "root") else None
        try:
            yield self
        finally:
            self.check_mode, self.environment, self.become_user = saved

    def as_user(self, argv: Union[Sequence[str], str], shell: bool, env: Dict[str, str]) -> Any:
        """The command run as ``become_user`` (runuser, with that user's HOME/USER), like Ansible's become."""
        import pwd

        try:
            account = pwd.getpwnam(str(self.become_user))
        except KeyError:
            raise ModuleError(f"become_user: no user {self.become_user} on the box") from None
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
        command = ["/bin/bash", "-c", argv] if shell else list(argv)
        return ["runuser", "-u", account.pw_name, "--"] + command

    def run(
        self,
        argv: Union[Sequence[str], str],
        check: bool = True,
        input: str | None = None,
        env: Dict[str, str] | None = None,
        shell: bool = False,
        cwd: str | None = None,
        timeout: float | None = None,
    ) -> Completed:
        full_env = dict(os.environ)
        full_env.setdefault("LC_ALL", "C.UTF-8")
        full_env.setdefault("DEBIAN_FRONTEND", "noninteractive")
        full_env.update(self.environment)
        full_env.update(env or {})
        if self.become_user is not None:
            argv, shell = self.as_user(argv, shell, full_env), False
        clock = self.clock
        step_bound = clock is not None and (timeout is None or clock.left() < timeout)
        limit = clock.left() if clock is not None and step_bound else timeout
        if clock is not None and step_bound and limit is not None and limit <= 0:
            raise clock.expire()
        proc = self._start_owned(argv, shell, input is not None, full_env, cwd)
        try:
            if clock is not None and clock.deferred:  # the alarm rang while the command was starting
                raise clock.expire()
            stdout, stderr = proc.communicate(input, timeout=limit)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            if clock is not None and step_bound:
                raise clock.expire() from None
            raise ModuleError(f"command timed out after {timeout}s", rc=124) from None
        except BaseException:  # the step's alarm (StepTimeout) or an interrupt: leave nothing running
            kill_group(proc)
            raise
        done = Completed(proc.returncode, stdout, stderr)
        if check and proc.returncode != 0:
            shown = argv if isinstance(argv, str) else " ".join(argv)
            raise ModuleError(
                f"'{shown}' exited {proc.returncode}: {tail(stderr or stdout)}",
                rc=proc.returncode,
                stdout=stdout,
                stderr=stderr,
            )
        return done

    def _start_owned(
        self, argv: Union[Sequence[str], str], shell: bool, with_input: bool, env: Dict[str, str], cwd: str | None
    ) -> "subprocess.Popen[str]":
        """Start a command; the step's alarm holds off meanwhile, so a started command always has an owner."""
        clock = self.clock
        if clock is None:
            return _start(argv, shell, with_input, env, cwd)
        clock.starting = True
        try:
            proc = _start(argv, shell, with_input, env, cwd)
        except BaseException:
            clock.starting = False
            if clock.deferred:
                raise clock.expire() from None
            raise
        clock.starting = False
        return proc

    def source_path(self, src: str, kind: str = "files") -> str:
        """An absolute ``src`` is a path on the box; a relative one is the role's own file in the bundle,
        and must stay there (a src rendered on the box can hold ``..``)."""
        if os.path.isabs(src):
            return src
        base = self.files_dir if kind == "files" else self.templates_dir
        parts = src.split("/")
        path = os.path.join(base, src)
        role_dir = os.path.realpath(os.path.join(base, parts[0]))
        if ".." in parts or len(parts) < 2 or not os.path.realpath(path).startswith(role_dir + os.sep):
            raise ModuleError(f"src {src} leads out of the role's {kind}/")
        return path


def _start(
    argv: Union[Sequence[str], str], shell: bool, with_input: bool, env: Dict[str, str], cwd: str | None
) -> "subprocess.Popen[str]":
    """Start a command in a session of its own, so that a timeout can kill all it started."""
    try:
        return subprocess.Popen(
            argv,
            shell=shell,
            stdin=subprocess.PIPE if with_input else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=True,
            executable="/bin/bash" if shell and os.path.exists("/bin/bash") else None,
        )
    except FileNotFoundError as exc:
        raise ModuleError(f"command not found: {exc.filename}", rc=127) from None


def kill_group(proc: "subprocess.Popen[str]") -> None:
    """Kill a command started in its own session, and everything it started; reap it.

    Its pipes are closed, not read: a process that left the group may still hold them open.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:  # stdin with unwritten input: nobody reads it any more
                pass


def require_command(name: str, install_hint: str) -> str:
    """The path of the command ``name`` on the box; a ModuleError with ``install_hint`` when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise ModuleError(f"{name} is not installed on the box ({install_hint})")
    return path


def tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def unified_diff(before: str, after: str, path: str) -> str:
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=f"{path} (before)",
            tofile=f"{path} (after)",
        )
    )


def backup_local(path: str) -> str:
    """A copy of ``path`` named as Ansible's modules name their backups (``name.PID.YYYY-MM-DD@HH:MM:SS~``),
    owner and mode kept; its name."""
    target = f"{path}.{os.getpid()}.{time.strftime('%Y-%m-%d@%H:%M:%S~', time.localtime())}"
    shutil.copy2(path, target)
    st = os.stat(path)
    os.chown(target, st.st_uid, st.st_gid)
    return target


def atomic_write(
    path: str, data: bytes, mode: int | None = None, validate: str | None = None, ctx: Context | None = None
) -> None:
    """Write via a temp file in the same directory, optionally validate it, then rename."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".kiln-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        if os.path.exists(path):
            # keep the replaced file's owner and mode (an explicit mode wins)
            st = os.stat(path)
            os.chown(tmp, st.st_uid, st.st_gid)
            os.chmod(tmp, mode if mode is not None else st.st_mode & 0o7777)
        else:
            os.chmod(tmp, mode if mode is not None else 0o644)
        if validate:
            runner = ctx or Context()
            done = runner.run(validate.replace("%s", tmp), shell=True, check=False)
            if done.rc != 0:
                raise ModuleError(f"validate '{validate}' rejected the new content: {tail(done.stderr or done.stdout)}")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def parse_mode(mode: str | None, current: int = 0) -> int | None:
    """Octal string -> int; symbolic modes (u+x,g-w) applied to ``current``."""
    if mode is None:
        return None
    if mode.isdigit():
        return int(mode, 8)
    result = current
    for clause in mode.split(","):
        op_index = min(i for i in (clause.find("+"), clause.find("-"), clause.find("=")) if i >= 0)
        who, op, perms = clause[:op_index] or "a", clause[op_index], clause[op_index + 1 :]
        bits = 0
        for w in who:
            shifts = {"u": [6], "g": [3], "o": [0], "a": [6, 3, 0]}[w]
            for shift in shifts:
                for p in perms:
                    bits |= {"r": 4, "w": 2, "x": 1, "X": 1}.get(p, 0) << shift
                    if p == "s" and shift in (6, 3):
                        bits |= 0o4000 if shift == 6 else 0o2000
                    if p == "t":
                        bits |= 0o1000
        if op == "+":
            result |= bits
        elif op == "-":
            result &= ~bits
        else:
            mask = 0
            for w in who:
                for shift in {"u": [6], "g": [3], "o": [0], "a": [6, 3, 0]}[w]:
                    mask |= 7 << shift
            result = (result & ~mask) | bits
    return result


def as_list(value: Any) -> List[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
