"""Apply a compiled bundle: every step in one process, one JSON event per step.

The controller has already validated and compiled the steps (positions, tags,
dependencies); the runner evaluates what needs the box: ``when``, ``loop``,
templated arguments, registered results, retries, handlers and blocks.

Events (docs/internals.md): ``start`` before each step, ``step`` after it,
``summary`` at the end. A step whose module asks for a reboot (``reboot``) ends the
run early: the runner saves its state to ``resume.json`` beside ``bundle.json``,
emits ``{"event": "reboot"}`` and the agent exits 3; ``apply --resume`` after the
boot reloads the state, reports the reboot step and continues with the next one.

Where the run is, for resuming, is a *path* into the step tree: ``(3,)`` is the
fourth top-level step, ``(3, "block", 0)`` the first step of its block,
``(5, "handler", "restart nginx")`` a handler run by the ``flush_handlers`` step at
``(5,)``, and ``("handler", name)`` a handler of the final flush. An include loop's block puts the item's
position before the section: ``(3, 1, "block", 0)`` is the first step of the second item's run of it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from . import facts as boxfacts
from . import schema as argschema
from .ansible_jinja import OMIT
from .api import Context, ModuleError, Result, StepClock, StepTimeout, tail
from .plugins import ByName
from .protocol import EXIT_REBOOT, REBOOT_REQUESTED, Event, RebootingModule, StepStatus
from .templating import Scope, TemplateError, evaluate, is_templated, render

#: where the modules live: ``agent.modules`` in the zipapp, ``kiln.agent.modules`` when installed
MODULES_PACKAGE = __name__.rpartition(".")[0] + ".modules"

REDACTED = "<redacted: no_log>"
RESUME_FILE = "resume.json"
#: what the run set (registered results, set_fact and include_vars values), for verify.yml's checks
RUN_VARIABLES_FILE = "run-vars.json"

Emit = Callable[[Dict[str, Any]], None]
Path = Tuple[Any, ...]


class StepFailed(Exception):
    def __init__(self, step: Dict[str, Any], msg: str) -> None:
        super().__init__(msg)
        self.step = step
        self.msg = msg


class RebootRequested(BaseException):
    """A step asked for a reboot: unwinds the step tree without running ``always`` or handlers."""

    def __init__(
        self,
        step: Dict[str, Any],
        path: Path,
        outcome: Dict[str, Any],
        result: Dict[str, Any],
        started: float,
        handler: bool,
    ) -> None:
        super().__init__(step.get("name"))
        self.step = step
        self.path = path
        self.outcome = outcome
        self.result = result
        self.started = started  # wall clock, so the resumed run can tell the step's duration
        self.handler = handler
        self.flush_rest: List[str] = []
        self.pending_failures: Dict[str, Dict[str, Any]] = {}


@contextlib.contextmanager
def time_limit(ctx: Context, limit: Optional[float]) -> Iterator[None]:
    """Run the body within ``limit`` seconds or raise StepTimeout.

    Commands run through ``ctx.run`` stop at the limit themselves (and take their
    process group with them); SIGALRM is the backstop for module code that runs no
    command (a download, a template, a retry's delay). The alarm needs the main thread.
    """
    if limit is None:
        yield
        return
    clock = StepClock(limit)
    ctx.clock = clock
    alarm = threading.current_thread() is threading.main_thread()

    def ring(signum: int, frame: Any) -> None:
        clock.ring()

    previous = signal.signal(signal.SIGALRM, ring) if alarm else None
    if alarm:
        signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        ctx.clock = None


def modules_by_name() -> ByName:
    """The agent's modules by name, each imported when a step first names it."""
    package = importlib.import_module(MODULES_PACKAGE)
    return ByName(MODULES_PACKAGE, package.__path__)


class Runner:
    def __init__(
        self,
        bundle: Dict[str, Any],
        ctx: Context,
        emit: Emit,
        modules: Dict[str, Any] | None = None,
        state_dir: str | None = None,
    ) -> None:
        self.bundle = bundle
        self.ctx = ctx
        self.emit = emit
        self.modules = modules or modules_by_name()
        self.state_dir = state_dir
        self.handlers = {h["name"]: h for h in bundle.get("handlers", [])}
        self.handler_order = [h["name"] for h in bundle.get("handlers", [])]
        self.notified: List[str] = []
        # the run's variables as written: those named in ``templated`` are rendered when read (Scope),
        # the rest (facts, registered results, set_fact values) are data
        self.variables: Dict[str, Any] = self.initial_variables(bundle, ctx)
        self.templated: Set[str] = set(bundle.get("vars", {}))
        self.learned: Set[str] = set()  # the variables the run set: kept for verify (RUN_VARIABLES_FILE)
        self.var_sources: Dict[str, str] = dict(bundle.get("var_sources") or {})
        # per role, the names its own tasks see otherwise (its own defaults over another role's; a private
        # include_role's variables): templates, below what the run sets (set_fact, register, include_vars)
        self.role_vars: Dict[str, Dict[str, Any]] = dict(bundle.get("role_vars") or {})
        # the items of the include loops the run is inside (innermost last), as their steps see them
        self.frames: List[Dict[str, Any]] = []
        self.counts = {"ok": 0, "changed": 0, "failed": 0, "skipped": 0, "ignored": 0, "rescued": 0}
        self.changed_steps: List[Dict[str, Any]] = []
        self.rescue_depth = 0  # > 0: a failure here is handled by an enclosing block's rescue
        self.exit_code = 0
        # resuming after a reboot
        self.cursor: Optional[Path] = None
        self.resume_state: Dict[str, Any] = {}
        self.flush_rest: List[str] = []
        self.pending_failures: Dict[str, Dict[str, Any]] = {}
        self.elapsed_before = 0.0

    @staticmethod
    def initial_variables(bundle: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        """Ansible's names (``ansible_facts``, ``ansible_*``, ``ansible_check_mode``) below the bundle's vars."""
        scope = boxfacts.variables(ctx.facts, ctx.check_mode) if ctx.facts.get("ansible") else {}
        scope["ansible_managed"] = "Ansible managed"
        scope.update(bundle.get("vars", {}))
        scope["facts"] = ctx.facts
        scope["__kiln_bundle_dirs"] = {"files": ctx.files_dir, "templates": ctx.templates_dir}
        return scope

    # --- entry point ----------------------------------------------------------
    def run(self, resume: Dict[str, Any] | None = None) -> bool:
        """Apply the bundle (or, with ``resume``, its rest after a reboot). False: a step failed.

        ``exit_code`` says 0 ok, 1 failed, 3 rebooting (state saved; run ``--resume`` after the boot).
        """
        started = time.monotonic()
        if resume is not None:
            self._load(resume)
        failure: StepFailed | None = None
        try:
            steps = self.bundle.get("steps", [])
            if self.cursor is None or isinstance(self.cursor[0], int):
                self.run_steps(steps, ())
            self.flush_handlers(())
        except StepFailed as exc:
            failure = exc
        except RebootRequested as reboot:
            return self._reboot(reboot, started)
        summary = dict(
            self.counts,
            event=Event.SUMMARY,
            duration=round(self.elapsed_before + time.monotonic() - started, 3),
            changed_steps=self.changed_steps,
            ok_run=failure is None,
        )
        if failure is not None:
            summary["failed_step"] = failure.step.get("name")
            summary["error"] = failure.msg
        self.emit(summary)
        self.exit_code = 0 if failure is None else 1
        self.keep_run_variables()
        return failure is None

    def keep_run_variables(self) -> None:
        """Write what the run set beside the bundle: verify.yml's checks read it as the steps did."""
        if self.state_dir is None:
            return
        learned = sorted(self.learned)
        state = {
            "variables": {name: self.variables[name] for name in learned},
            "templated": [name for name in learned if name in self.templated],
        }
        path = os.path.join(self.state_dir, RUN_VARIABLES_FILE)
        try:
            fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(state, handle, default=str)
            os.replace(path + ".tmp", path)
        except OSError:  # verify then reads the bundle's variables alone
            pass

    def run_steps(self, steps: List[Dict[str, Any]], prefix: Path) -> None:
        start = 0
        if self.cursor is not None:  # resuming: skip to the step on the way to the reboot
            here = self.cursor[len(prefix)]
            start = here if isinstance(here, int) else len(steps)
        for position in range(start, len(steps)):
            self.run_step(steps[position], prefix + (position,))

    # --- one step ---------------------------------------------------------------
    def run_step(self, step: Dict[str, Any], path: Path = (), handler: bool = False) -> None:
        if self.cursor is not None and self.cursor == path:
            return self._resume_reboot_step(step, path, handler)
        if "block" in step:
            return self.run_block(step, path)
        if step.get("module") == "flush_handlers":
            return self.flush_handlers(path)
        if self.cursor is not None:  # the way to the reboot step leads through blocks and flushes only
            self.cursor = None
            return self.finish_step(
                step,
                {
                    "status": StepStatus.FAILED,
                    "msg": "cannot resume after the reboot: the bundle no longer matches the saved state",
                },
                0,
                handler,
            )
        step = self.named(step)
        step, problem = self.no_log_decided(step)
        if problem:
            return self.finish_step(step, {"status": StepStatus.FAILED, "msg": problem}, 0, handler)
        announce: Dict[str, Any] = {
            "event": Event.START,
            "index": step.get("index"),
            "name": step.get("name"),
            "module": step.get("module"),
        }
        if handler:
            announce["handler"] = True
        self.emit(announce)
        started, wall = time.monotonic(), time.time()
        reboot: Dict[str, Any] | None = None
        try:
            with time_limit(self.ctx, self.limit_of(step)):
                outcome = self.execute(step)
            reboot = outcome.pop("reboot", None)
        except StepFailed as exc:
            outcome = {"status": StepStatus.FAILED, "msg": exc.msg}
        except StepTimeout as exc:
            outcome = self.timed_out(step, exc)
        if reboot is not None and outcome["status"] == StepStatus.CHANGED:
            raise RebootRequested(step, path, outcome, reboot, wall, handler)
        self.finish_step(step, outcome, time.monotonic() - started, handler)

    def named(self, step: Dict[str, Any]) -> Dict[str, Any]:
        """``step`` with its name rendered with the variables as they are now, as Ansible names a task when it
        runs; as written when it cannot be (a loop's item, a name not defined yet)."""
        name = step.get("name")
        if not is_templated(name):
            return step
        try:
            return dict(step, name=str(render(name, self.step_scope(step))))
        except TemplateError:
            return step

    def no_log_decided(self, step: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
        """``step`` with a templated no_log (one the controller left to the box: it reads what a step set) rendered
        with the step's variables now, before it runs, as Ansible templates it; a value that is no boolean, or that
        cannot be rendered, fails the step as in Ansible (its message is about no_log, never the step's output)."""
        value = step.get("no_log")
        if not is_templated(value):
            return step, ""
        try:
            rendered = render(value, self.step_scope(step))
        except TemplateError as exc:
            return dict(step, no_log=False), f"no_log: {exc}"
        decided = as_boolean(rendered)
        if decided is None:
            return dict(step, no_log=False), f"no_log: the value {rendered!r} is not a valid boolean"
        return dict(step, no_log=decided), ""

    def hides(self, step: Dict[str, Any]) -> bool:
        """Whether ``step``'s no_log holds; a template not decided yet (an include loop's block) is rendered now,
        and hides when it cannot be."""
        if not is_templated(step.get("no_log")):
            return bool(step.get("no_log"))
        decided, problem = self.no_log_decided(step)
        return bool(problem) or decided["no_log"]

    def limit_of(self, step: Dict[str, Any]) -> Optional[float]:
        """Seconds one execution of ``step`` may take (all its loop items and retries): its own, or the default."""
        limit = step.get("timeout", self.bundle.get("step_timeout"))
        return float(limit) if limit else None

    def timed_out(self, step: Dict[str, Any], exc: StepTimeout) -> Dict[str, Any]:
        """A timeout is a failure (failed_when cannot clear it); ``register`` still gets a result."""
        msg = f"step {step.get('index')} '{step.get('name')}' timed out after {exc.limit:g}s"
        if step.get("register"):
            self.set_variable(step["register"], {"changed": False, "failed": True, "timed_out": True, "msg": msg})
        return {"status": StepStatus.FAILED, "msg": msg, "timed_out": True}

    def finish_step(self, step: Dict[str, Any], outcome: Dict[str, Any], duration: float, handler: bool) -> None:
        """Count, notify and report a step that ran; raise StepFailed when it failed for good."""
        event: Dict[str, Any] = {
            "event": Event.STEP,
            "index": step.get("index"),
            "name": step.get("name"),
            "module": step.get("module"),
            "source": step.get("source"),
        }
        if handler:
            event["handler"] = True
        event.update(outcome)
        event["duration"] = round(duration, 4)
        if self.hides(step):
            for key in ("msg", "diff", "stdout", "stderr", "registered"):
                if key in event:
                    event[key] = REDACTED
        status = event["status"]
        if status == StepStatus.FAILED and step.get("ignore_errors"):
            event["ignored"] = True
            self.counts["ignored"] += 1
        elif status == StepStatus.FAILED and self.rescue_depth:
            event["rescued"] = True  # an enclosing block's rescue takes over
            self.counts["rescued"] += 1
        else:
            self.counts[status] += 1
        if status == StepStatus.CHANGED:
            self.changed_steps.append(
                {"index": step.get("index"), "name": step.get("name"), "idempotent": step.get("idempotent", True)}
            )
            for name in step.get("notify", []):
                if name not in self.notified:
                    self.notified.append(name)
        self.emit(event)
        if status == StepStatus.FAILED and not step.get("ignore_errors"):
            raise StepFailed(step, event.get("msg") or "failed")

    def execute(self, step: Dict[str, Any]) -> Dict[str, Any]:
        """Evaluate when/loop, run each item, register; return the step's outcome."""
        loop = step.get("loop")
        control = step.get("loop_control") or {}
        loop_var = control.get("loop_var") or step.get("loop_var", "item")
        base = self.step_scope(step)
        if loop is None:
            items: List[Any] = [None]
        else:
            try:
                items = self._loop_items(loop, base, step)
            except StepFailed as exc:
                if not self._skipped_before_its_loop(step, base, exc):
                    raise
                skipped = {"changed": False, "failed": False, "skipped": True, "msg": "when was false"}
                if step.get("register"):
                    self.set_variable(step["register"], skipped)
                return {"status": StepStatus.SKIPPED, "msg": skipped["msg"]}
            if not isinstance(items, list):
                raise StepFailed(step, f"loop must give a list, got {type(items).__name__}")
        results = []
        for position, item in enumerate(items):
            scope = base
            if loop is not None:  # a new scope each item: it sees what earlier items set (set_fact)
                own = {loop_var: item, "ansible_loop_var": loop_var}
                if control.get("index_var"):
                    own[control["index_var"]] = position
                scope = base.child(own)
            if step.get("when") is not None and not self._truth(step["when"], scope, step, "when"):
                results.append({"changed": False, "failed": False, "skipped": True, "msg": "when was false"})
                continue
            result = self.run_with_retries(step, scope)
            if result.get(REBOOT_REQUESTED) and loop is not None:
                result = {"changed": False, "failed": True, "msg": "a reboot cannot run in a loop"}
            if loop is not None:
                result.update({loop_var: item, "ansible_loop_var": loop_var})
                if control.get("index_var"):
                    result["ansible_index_var"], result[control["index_var"]] = control["index_var"], position
            self.learn(result, step.get("module", ""))
            results.append(result)
        if loop is None:
            registered = results[0]
        else:
            registered = {
                "results": results,
                "changed": any(r.get("changed") for r in results),
                "failed": any(r.get("failed") for r in results),
                "skipped": bool(results) and all(r.get("skipped") for r in results),
                "msg": next((r.get("msg") for r in results if r.get("failed")), f"{len(results)} items"),
            }
        outcome: Dict[str, Any] = {"msg": registered.get("msg", "")}
        if step.get("register"):
            self.set_variable(step["register"], registered)
        if step.get("register") or step.get("module") == "debug":  # what it registers (or shows)
            outcome["registered"] = registered
        if loop is not None and control.get("label") is not None:
            outcome["labels"] = [self._label(control["label"], base.child({loop_var: i}), step) for i in items]
        if loop is not None:
            outcome["items"] = len(results)
        for key in ("diff", "rc", "stderr"):
            if key in registered:
                outcome[key] = registered[key] if key != "stderr" else str(registered[key])[-2000:]
        if loop is not None:
            diffs = [r["diff"] for r in results if r.get("diff")]
            if diffs:
                outcome["diff"] = diffs
        if registered.get("predicted") is False:
            outcome["predicted"] = False
        if registered.get("failed"):
            outcome["status"] = StepStatus.FAILED
        elif registered.get("skipped"):
            outcome["status"] = StepStatus.SKIPPED
        elif registered.get("changed"):
            outcome["status"] = StepStatus.CHANGED
        else:
            outcome["status"] = StepStatus.OK
        if registered.get(REBOOT_REQUESTED) and not registered.get("failed"):
            outcome["reboot"] = registered
        return outcome

    def scope(self) -> Scope:
        """The run's variables as they are now, each rendered when read."""
        return Scope([(self.variables, self.templated)], self.var_sources)

    def step_scope(self, step: Dict[str, Any]) -> Scope:
        """The run's variables, with the step's role's name and path and its own ``vars`` (templates too)."""
        scope = self.scope()
        seen_by_role = self.role_vars.get(step.get("role") or "")
        if seen_by_role:
            scope = scope.child({k: v for k, v in seen_by_role.items() if k not in self.learned}, True)
        if step.get("role"):
            scope = scope.child(
                {
                    "role_name": step["role"],
                    "ansible_role_name": step["role"],
                    "role_path": os.path.join(self.ctx.files_dir, step["role"]),
                }
            )
        for frame in self.frames:
            scope = scope.child(frame)
        if step.get("vars"):
            scope = scope.child(step["vars"], True)
        return scope

    def set_variable(self, name: str, value: Any, templated: bool = False) -> None:
        """Set a variable of the run: data (a registered result, a set_fact value) or a template (include_vars)."""
        self.variables[name] = value
        self.learned.add(name)
        if templated:
            self.templated.add(name)
        else:
            self.templated.discard(name)

    def learn(self, result: Dict[str, Any], module: str = "") -> None:
        """set_fact and include_vars give variables (as ``ansible_facts`` in their result, as Ansible's do);
        the facts of other modules (service_facts, package_facts) are also under ``ansible_facts``, as in Ansible."""
        learned = result.get("ansible_facts")
        if result.get("failed") or not isinstance(learned, dict):
            return
        for name, value in learned.items():
            self.set_variable(name, value, templated=module == "include_vars")
        if module not in ("set_fact", "include_vars"):  # in the namespace without the prefix: ansible_facts.hostname
            named = {name[len("ansible_") :] if name.startswith("ansible_") else name: v for name, v in learned.items()}
            self.variables["ansible_facts"] = dict(self.variables.get("ansible_facts") or {}, **named)

    def run_with_retries(self, step: Dict[str, Any], scope: Scope) -> Dict[str, Any]:
        until = step.get("until")
        try:
            retries = int(self._eval(step.get("retries", 0), scope, step, "retries") or 0)
            delay = float(self._eval(step.get("delay", 5), scope, step, "delay"))
        except (TypeError, ValueError) as exc:
            return {"changed": False, "failed": True, "msg": f"retries/delay must be numbers: {exc}"}
        attempts = (retries if retries else (3 if until else 0)) + 1
        result: Dict[str, Any] = {}
        for attempt in range(1, attempts + 1):
            result = self.run_once(step, scope)
            result["attempts"] = attempt
            if result.get(REBOOT_REQUESTED):
                return result
            if until is None and not result.get("failed"):
                break
            if until is not None:
                if self._truth(until, self.with_result(scope, step, result), step, "until"):
                    break
            if attempt < attempts:
                time.sleep(max(delay, 0.0))
        else:
            if until is not None:
                result["failed"] = True
                result["msg"] = f"'until' still false after {attempts} attempts: {result.get('msg', '')}"
        return result

    def with_result(self, scope: Scope, step: Dict[str, Any], result: Dict[str, Any]) -> Scope:
        """``scope`` with the step's result as ``result`` and as its ``register`` name (until, changed_when...)."""
        own = {"result": result}
        if step.get("register"):
            own[step["register"]] = result
        return scope.child(own)

    def run_once(self, step: Dict[str, Any], scope: Scope) -> Dict[str, Any]:
        module = self.modules.get(step["module"])
        if module is None:
            return {"changed": False, "failed": True, "msg": f"unknown module '{step['module']}'"}
        try:
            args = without_omitted(render(step.get("args", {}), scope))
        except TemplateError as exc:
            return {"changed": False, "failed": True, "msg": f"templating: {exc}"}
        if step.get("int_mode_is_bits"):
            args = modes_as_ansible_reads_numbers(module.SCHEMA, args)
        params, errors = argschema.validate(module.SCHEMA, args)
        if errors:
            return {
                "changed": False,
                "failed": True,
                "msg": "; ".join((f"{e.key}: " if e.key else "") + e.message for e in errors),
            }
        self.ctx.variables = scope
        self.ctx.step = step
        try:
            with self.ctx.acting(
                check_mode=step.get("check_mode"),
                environment={str(k): str(v) for k, v in render(step.get("environment") or {}, scope).items()},
                become_user=render(step.get("become_user"), scope) if step.get("become") is not False else None,
            ):
                state = module.check(params, self.ctx)
                result: Result = module.apply(params, state, self.ctx)
            out: Dict[str, Any] = dict(result.data, changed=result.changed, failed=False, msg=result.msg)
            if result.diff is not None:
                out["diff"] = result.diff
            if not result.predicted:
                out["predicted"] = False
        except ModuleError as exc:
            # a command that ran and exited non-zero may have changed the box (Ansible: changed);
            # that matters only when failed_when clears the failure
            ran = "rc" in exc.data and not self.ctx.check_mode
            out = dict(exc.data, changed=bool(exc.data.get("changed", ran)), failed=True, msg=exc.msg)
            output = str(exc.data.get("stderr") or exc.data.get("stdout") or "").strip()
            if output and output not in exc.msg:  # the why, right in the failure line
                out["msg"] = f"{exc.msg}: {tail(output, 5)}"
        except (OSError, ValueError, KeyError, TemplateError) as exc:
            out = {"changed": False, "failed": True, "msg": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:  # a bug in a module fails its step, not the whole agent run
            out = {
                "changed": False,
                "failed": True,
                "msg": f"module {step['module']} crashed: {type(exc).__name__}: {exc}",
            }
        local = self.with_result(scope, step, out)
        if step.get("changed_when") is not None:  # it decides even on a failure that failed_when then clears
            out["changed"] = self._truth(step["changed_when"], local, step, "changed_when")
        if step.get("failed_when") is not None:
            out["failed"] = self._truth(step["failed_when"], local, step, "failed_when")
            if out["failed"] and not out.get("msg"):
                out["msg"] = "failed_when was true"
        if out.get(REBOOT_REQUESTED) and (out["failed"] or not out["changed"]):
            out.pop(REBOOT_REQUESTED)
        return out

    # --- blocks and handlers ----------------------------------------------------
    def run_block(self, step: Dict[str, Any], path: Path) -> None:
        if step.get("loop") is not None:
            return self.run_block_loop(step, path)
        return self.run_block_once(step, path)

    def run_block_loop(self, step: Dict[str, Any], path: Path) -> None:
        """An include looped (include_tasks, include_role): its block once per item, the items given when it is
        reached (a registered result, a set_fact value, facts). As Ansible's include, it first decides each item's
        ``when`` (a skipped item is reported then), and then runs the wanted items' steps, which see the item (a
        frame of ``step_scope``). ``path`` + the item's position leads to each item's steps (a reboot inside
        resumes at that item)."""
        control = step.get("loop_control") or {}
        loop_var = control.get("loop_var") or "item"
        resume_at = self.cursor[len(path)] if self.cursor is not None else 0
        try:
            items = self._loop_items(step["loop"], self.step_scope(step), step)
            if not isinstance(items, list):
                raise StepFailed(step, f"loop must give a list, got {type(items).__name__}")
        except StepFailed as exc:
            if self._skipped_before_its_loop(step, self.step_scope(step), exc):
                self.block_wanted(step)  # false: reported skipped
                return None
            return self.finish_step(dict(step, module="block"), {"status": StepStatus.FAILED, "msg": exc.msg}, 0, False)
        once = {k: v for k, v in step.items() if k not in ("loop", "loop_control", "when")}
        wanted: List[Tuple[int, Dict[str, Any], Dict[str, Any]]] = []
        for position in range(resume_at if isinstance(resume_at, int) else 0, len(items)):
            frame = {loop_var: items[position], "ansible_loop_var": loop_var}
            if control.get("index_var"):
                frame.update({control["index_var"]: position, "ansible_index_var": control["index_var"]})
            with self.inside(frame):
                label = self._item_label(control, once, items[position])
                named = dict(once, name=f"{once.get('name')} ({loop_var}={label})")
                resuming = self.cursor is not None
                if (resuming and position == resume_at) or self.block_wanted(
                    dict(named, when=step.get("when")), report=not resuming
                ):
                    wanted.append((position, frame, named))
        for position, frame, named in wanted:
            with self.inside(frame):
                self.run_block_once(named, path + (position,))

    @contextlib.contextmanager
    def inside(self, frame: Dict[str, Any]) -> Iterator[None]:
        """The steps run here see ``frame`` (an include loop's item) above the run's variables."""
        self.frames.append(frame)
        try:
            yield
        finally:
            self.frames.pop()

    def _item_label(self, control: Dict[str, Any], step: Dict[str, Any], item: Any) -> str:
        """What names an include loop's item: ``loop_control.label`` rendered with the item, else the item, short."""
        if self.hides(step):
            return REDACTED
        text = item if isinstance(item, str) else json.dumps(item, default=str, sort_keys=True)
        if control.get("label") is not None:
            try:
                text = str(render(control["label"], self.step_scope(step)))
            except TemplateError:
                pass
        return text if len(text) <= 40 else text[:37] + "..."

    def block_wanted(self, step: Dict[str, Any], report: bool = True) -> bool:
        """Whether a block's ``when`` holds now; a skipped block is reported, a ``when`` that fails fails it
        (``report=False``: decided again after a reboot, reported before it)."""
        if step.get("when") is None:
            return True
        try:
            wanted = self._truth(step["when"], self.step_scope(step), step, "when")
        except StepFailed as exc:
            if report:
                self.finish_step(dict(step, module="block"), {"status": StepStatus.FAILED, "msg": exc.msg}, 0, False)
            return False
        if not wanted and report:
            self.emit(
                {
                    "event": Event.STEP,
                    "index": step.get("index"),
                    "name": step.get("name"),
                    "module": "block",
                    "status": StepStatus.SKIPPED,
                    "msg": "when was false",
                    "duration": 0,
                }
            )
            self.counts["skipped"] += 1
        return wanted

    def run_block_once(self, step: Dict[str, Any], path: Path) -> None:
        section = self.cursor[len(path)] if self.cursor is not None else None
        if section is None and not self.block_wanted(step):
            return
        rescue = step.get("rescue") or []
        try:
            if section in (None, "block"):
                try:
                    self.rescue_depth += 1 if rescue else 0
                    try:
                        self.run_steps(step["block"], path + ("block",))
                    finally:
                        self.rescue_depth -= 1 if rescue else 0
                except StepFailed as exc:
                    if not rescue:
                        raise
                    self.variables["kiln_failed_step"] = {"name": exc.step.get("name"), "msg": exc.msg}
                    self.run_steps(rescue, path + ("rescue",))
            elif section == "rescue":
                self.run_steps(rescue, path + ("rescue",))
        except StepFailed as exc:
            self._always(step, path, exc)
            raise
        pending = self.pending_failures.pop(json.dumps(path), None) if section == "always" else None
        self._always(step, path, None)
        if pending is not None:  # the block had failed before a reboot inside its always
            raise StepFailed({"name": pending["name"], "index": pending.get("index")}, pending["msg"])

    def _always(self, step: Dict[str, Any], path: Path, failure: StepFailed | None) -> None:
        try:
            self.run_steps(step.get("always") or [], path + ("always",))
        except RebootRequested as reboot:
            if failure is not None:
                reboot.pending_failures[json.dumps(path)] = {
                    "name": failure.step.get("name"),
                    "index": failure.step.get("index"),
                    "msg": failure.msg,
                }
            raise

    def flush_handlers(self, path: Path = ()) -> None:
        """Run the notified handlers once each, in definition order (``path``: the flush step's)."""
        if self.cursor is not None:  # resuming inside this flush: the rebooting handler, then the rest
            current = self.cursor[len(path) + 1]
            todo = [current] + list(self.flush_rest)
        else:
            pending, self.notified = self.notified, []
            todo = [name for name in self.handler_order if self.is_notified(self.handlers[name], pending)]
        frames, self.frames = self.frames, []  # a handler never sees the item of the include loop it flushes in
        try:
            for position, name in enumerate(todo):
                try:
                    self.run_step(self.handlers[name], path + ("handler", name), handler=True)
                except RebootRequested as reboot:
                    reboot.flush_rest = todo[position + 1 :]
                    raise
        finally:
            self.frames = frames

    @staticmethod
    def is_notified(handler: Dict[str, Any], notified: List[str]) -> bool:
        """Notified by its name or by a topic it listens to (``listen``), as in Ansible."""
        listens = handler.get("listen") or []
        return handler["name"] in notified or any(topic in notified for topic in as_topics(listens))

    # --- rebooting and resuming ---------------------------------------------------
    def _reboot(self, reboot: RebootRequested, started: float) -> bool:
        """Save where we are, schedule the reboot, say so; the agent then exits 3."""
        state = {
            "version": 1,
            "cursor": list(reboot.path),
            "flush_rest": reboot.flush_rest,
            "pending_failures": reboot.pending_failures,
            "notified": self.notified,
            "counts": self.counts,
            "changed_steps": self.changed_steps,
            "variables": {k: v for k, v in self.variables.items() if k != "facts"},
            "templated": sorted(self.templated),
            "learned": sorted(self.learned),
            "elapsed": round(self.elapsed_before + time.monotonic() - started, 3),
            "saved_at": time.time(),
            "step": {
                "outcome": reboot.outcome,
                "result": reboot.result,
                "started": reboot.started,
                "handler": reboot.handler,
            },
        }
        try:
            if self.state_dir is None:
                raise OSError("no bundle directory to keep the run state in")
            path = os.path.join(self.state_dir, RESUME_FILE)
            with open(path + ".tmp", "w") as handle:
                json.dump(state, handle, default=str)
            os.replace(path + ".tmp", path)
            self._rebooting(reboot.step["module"]).schedule(reboot.result, self.ctx)
        except (OSError, ModuleError) as exc:
            msg = getattr(exc, "msg", None) or f"{type(exc).__name__}: {exc}"
            outcome = dict(reboot.outcome, status=StepStatus.FAILED, msg=f"cannot reboot: {msg}")
            try:
                self.finish_step(reboot.step, outcome, time.time() - reboot.started, reboot.handler)
            except StepFailed as failed:
                self.emit(
                    dict(
                        self.counts,
                        event=Event.SUMMARY,
                        duration=state["elapsed"],
                        changed_steps=self.changed_steps,
                        ok_run=False,
                        failed_step=reboot.step.get("name"),
                        error=failed.msg,
                    )
                )
            self.exit_code = 1
            return False
        self.emit(
            {
                "event": Event.REBOOT,
                "index": reboot.step.get("index"),
                "name": reboot.step.get("name"),
                "timeout": reboot.result.get("reboot_timeout", 300),
                "msg": REDACTED if self.hides(reboot.step) else reboot.outcome.get("msg", ""),
            }
        )
        self.exit_code = EXIT_REBOOT
        return True

    def _rebooting(self, name: str) -> RebootingModule:
        """The module that asked for the reboot, with the hooks the protocol declares for it."""
        module = self.modules[name]
        if not (callable(getattr(module, "schedule", None)) and callable(getattr(module, "confirm", None))):
            raise ModuleError(f"module '{name}' asked for a reboot but has no schedule/confirm hooks")
        return module  # type: ignore[return-value]

    def _load(self, state: Dict[str, Any]) -> None:
        self.cursor = tuple(state["cursor"])
        self.flush_rest = list(state.get("flush_rest", []))
        self.pending_failures = dict(state.get("pending_failures", {}))
        self.notified = list(state.get("notified", []))
        self.counts.update(state.get("counts", {}))
        self.changed_steps = list(state.get("changed_steps", []))
        self.variables.update(state.get("variables", {}))
        self.templated = set(state.get("templated", self.templated))
        self.learned = set(state.get("learned", []))
        self.variables["facts"] = self.ctx.facts
        # the run's duration counts the time the machine spent rebooting
        self.elapsed_before = float(state.get("elapsed", 0)) + max(
            time.time() - float(state.get("saved_at", 0) or time.time()), 0.0
        )
        self.resume_state = state["step"]

    def _resume_reboot_step(self, step: Dict[str, Any], path: Path, handler: bool) -> None:
        """Back after the boot: the reboot step is done (if the machine really rebooted)."""
        self.cursor = None
        saved = self.resume_state
        outcome = dict(saved["outcome"])
        result = dict(saved["result"])
        try:
            self._rebooting(step["module"]).confirm(result, self.ctx)
            took = time.time() - float(saved["started"])
            outcome["msg"] = f"{outcome.get('msg') or 'rebooting'}: back after {took:.1f}s"
            result.update(rebooted=True, elapsed=round(took, 1))
        except ModuleError as exc:
            outcome.update(status=StepStatus.FAILED, msg=exc.msg)
            result.update(failed=True, msg=exc.msg)
        result.pop(REBOOT_REQUESTED, None)
        if step.get("register"):
            self.set_variable(step["register"], result)
            outcome["registered"] = result
        self.finish_step(step, outcome, time.time() - float(saved["started"]), handler or saved.get("handler", False))

    # --- expressions ------------------------------------------------------------
    def _eval(self, expression: Any, scope: Scope, step: Dict[str, Any], keyword: str) -> Any:
        try:
            return evaluate(expression, scope)
        except TemplateError as exc:
            raise StepFailed(step, f"{keyword}: {exc}") from exc

    def _skipped_before_its_loop(self, step: Dict[str, Any], scope: Scope, failure: StepFailed) -> bool:
        """Whether a step whose loop read an undefined name is skipped by its ``when`` instead: Ansible's executor
        keeps that error until the ``when`` (without the loop's variable) is known (``loop: "{{ groups }}"`` under
        ``when: groups is defined``); a when that cannot be decided so leaves the loop's error."""
        cause = failure.__cause__
        if step.get("when") is None or not (isinstance(cause, TemplateError) and cause.undefined):
            return False
        try:
            return not self._truth(step["when"], scope, step, "when")
        except StepFailed:
            return False

    def _label(self, label: Any, scope: Scope, step: Dict[str, Any]) -> str:
        try:
            return str(render(label, scope))
        except TemplateError as exc:
            raise StepFailed(step, f"loop_control.label: {exc}") from exc

    def _loop_items(self, loop: Any, scope: Scope, step: Dict[str, Any]) -> Any:
        """A ``loop`` expression's value, or a written list with its templates rendered (as Ansible does)."""
        if not isinstance(loop, list):
            return self._eval(loop, scope, step, "loop")
        try:
            return render(loop, scope)
        except TemplateError as exc:
            raise StepFailed(step, f"loop: {exc}") from exc

    def _truth(self, expression: Any, scope: Scope, step: Dict[str, Any], keyword: str) -> bool:
        if isinstance(expression, list):
            return all(self._truth(e, scope, step, keyword) for e in expression)
        return bool(self._eval(expression, scope, step, keyword))


#: ansible-core's BOOLEANS_TRUE and BOOLEANS_FALSE (module_utils/parsing/convert_bool.py)
TRUE_VALUES = ("y", "yes", "on", "1", "true", "t")
FALSE_VALUES = ("n", "no", "off", "0", "false", "f")


def as_boolean(value: Any) -> Optional[bool]:
    """``value`` as ansible-core's strict boolean() reads it; None when it is no boolean."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    return True if text in TRUE_VALUES else False if text in FALSE_VALUES else None


def without_omitted(value: Any) -> Any:
    """``value`` without the arguments (and the items and keys inside them) that templated to ``omit``."""
    if isinstance(value, dict):
        return {k: without_omitted(v) for k, v in value.items() if v != OMIT}
    if isinstance(value, list):
        return [without_omitted(v) for v in value if v != OMIT]
    return value


def as_topics(listen: Any) -> List[str]:
    return [listen] if isinstance(listen, str) else [str(topic) for topic in listen]


def modes_as_ansible_reads_numbers(schema: Dict[str, Any], args: Dict[str, Any]) -> Dict[str, Any]:
    """A mode that a template of an Ansible-layout step rendered as a number is its permission bits, as Ansible's
    modules read it: a role's ``dir_mode: 02770`` (YAML 1.1 octal, the number 1528) given as ``mode: "{{ dir_mode }}"``
    is "02770" (geerlingguy.redis). kiln's own step files keep refusing a numeric mode (YAML 1.2's 0644 is 644)."""
    out = dict(args)
    for name, spec in schema.get("args", {}).items():
        value = out.get(name)
        if spec.get("type") == "mode" and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            out[name] = f"0{value:o}"
    return out
