"""Apply a compiled bundle: every step in one process, one JSON event per step.

The controller has already validated and compiled the steps (positions, tags,
dependencies); the runner evaluates what needs the box: ``when``, ``loop``,
templated arguments, registered results, retries, handlers and blocks.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List

from agent import schema as argschema
from agent.api import Context, ModuleError, Result, tail
from agent.modules import discover
from agent.templating import TemplateError, evaluate, render

REDACTED = "<redacted: no_log>"

Emit = Callable[[Dict[str, Any]], None]


class StepFailed(Exception):
    def __init__(self, step: Dict[str, Any], msg: str) -> None:
        super().__init__(msg)
        self.step = step
        self.msg = msg


class Runner:
    def __init__(self, bundle: Dict[str, Any], ctx: Context, emit: Emit,
                 modules: Dict[str, Any] | None = None) -> None:
        self.bundle = bundle
        self.ctx = ctx
        self.emit = emit
        self.modules = modules or discover()
        self.handlers = {h["name"]: h for h in bundle.get("handlers", [])}
        self.handler_order = [h["name"] for h in bundle.get("handlers", [])]
        self.notified: List[str] = []
        self.variables: Dict[str, Any] = dict(bundle.get("vars", {}))
        self.variables["facts"] = ctx.facts
        self.counts = {"ok": 0, "changed": 0, "failed": 0, "skipped": 0, "ignored": 0}
        self.changed_steps: List[Dict[str, Any]] = []

    # --- entry point ----------------------------------------------------------
    def run(self) -> bool:
        started = time.monotonic()
        failure: StepFailed | None = None
        try:
            self.run_steps(self.bundle.get("steps", []))
            self.flush_handlers()
        except StepFailed as exc:
            failure = exc
        summary = dict(self.counts, event="summary", duration=round(time.monotonic() - started, 3),
                       changed_steps=self.changed_steps, ok_run=failure is None)
        if failure is not None:
            summary["failed_step"] = failure.step.get("name")
            summary["error"] = failure.msg
        self.emit(summary)
        return failure is None

    def run_steps(self, steps: List[Dict[str, Any]]) -> None:
        for step in steps:
            self.run_step(step)

    # --- one step ---------------------------------------------------------------
    def run_step(self, step: Dict[str, Any], handler: bool = False) -> None:
        if "block" in step:
            return self.run_block(step)
        if step.get("module") == "flush_handlers":
            return self.flush_handlers()
        started = time.monotonic()
        event: Dict[str, Any] = {"event": "step", "index": step.get("index"), "name": step.get("name"),
                                 "module": step.get("module"), "source": step.get("source")}
        if handler:
            event["handler"] = True
        try:
            outcome = self.execute(step)
        except StepFailed as exc:
            outcome = {"status": "failed", "msg": exc.msg}
        event.update(outcome)
        event["duration"] = round(time.monotonic() - started, 4)
        if step.get("no_log"):
            for key in ("msg", "diff", "stdout", "stderr"):
                if key in event:
                    event[key] = REDACTED
        status = event["status"]
        if status == "failed" and step.get("ignore_errors"):
            event["ignored"] = True
            self.counts["ignored"] += 1
        else:
            self.counts[status] += 1
        if status == "changed":
            self.changed_steps.append({"index": step.get("index"), "name": step.get("name"),
                                       "idempotent": step.get("idempotent", True)})
            for name in step.get("notify", []):
                if name not in self.notified:
                    self.notified.append(name)
        self.emit(event)
        if status == "failed" and not step.get("ignore_errors"):
            raise StepFailed(step, event.get("msg") or "failed")

    def execute(self, step: Dict[str, Any]) -> Dict[str, Any]:
        """Evaluate when/loop, run each item, register; return the step's outcome."""
        loop = step.get("loop")
        loop_var = step.get("loop_var", "item")
        if loop is None:
            items: List[Any] = [None]
        else:
            items = self._eval(loop, self.variables, step, "loop")
            if not isinstance(items, list):
                raise StepFailed(step, f"loop must give a list, got {type(items).__name__}")
        results = []
        for item in items:
            scope = self.variables if loop is None else dict(self.variables, **{loop_var: item})
            if step.get("when") is not None and not self._truth(step["when"], scope, step, "when"):
                results.append({"changed": False, "failed": False, "skipped": True, "msg": "when was false"})
                continue
            results.append(self.run_with_retries(step, scope))
        if loop is None:
            registered = results[0]
        else:
            registered = {"results": results, "changed": any(r.get("changed") for r in results),
                          "failed": any(r.get("failed") for r in results),
                          "skipped": bool(results) and all(r.get("skipped") for r in results),
                          "msg": f"{len(results)} items"}
        if step.get("register"):
            self.variables[step["register"]] = registered
        outcome: Dict[str, Any] = {"msg": registered.get("msg", "")}
        if loop is not None:
            outcome["items"] = len(results)
        for key in ("diff", "rc", "stderr"):
            if key in registered:
                outcome[key] = registered[key] if key != "stderr" else registered[key][-2000:]
        if loop is not None:
            diffs = [r["diff"] for r in results if r.get("diff")]
            if diffs:
                outcome["diff"] = diffs
        if registered.get("predicted") is False:
            outcome["predicted"] = False
        if registered.get("failed"):
            outcome["status"] = "failed"
        elif registered.get("skipped"):
            outcome["status"] = "skipped"
        elif registered.get("changed"):
            outcome["status"] = "changed"
        else:
            outcome["status"] = "ok"
        return outcome

    def run_with_retries(self, step: Dict[str, Any], scope: Dict[str, Any]) -> Dict[str, Any]:
        retries = int(step.get("retries", 0) or 0)
        until = step.get("until")
        attempts = (retries if retries else (3 if until else 0)) + 1
        result: Dict[str, Any] = {}
        for attempt in range(1, attempts + 1):
            result = self.run_once(step, scope)
            result["attempts"] = attempt
            if until is None and not result.get("failed"):
                break
            if until is not None:
                local = dict(scope, **({step["register"]: result} if step.get("register") else {}))
                local["result"] = result
                if self._truth(until, local, step, "until"):
                    break
            if attempt < attempts:
                time.sleep(float(step.get("delay", 5)))
        else:
            if until is not None:
                result["failed"] = True
                result["msg"] = f"'until' still false after {attempts} attempts: {result.get('msg', '')}"
        return result

    def run_once(self, step: Dict[str, Any], scope: Dict[str, Any]) -> Dict[str, Any]:
        module = self.modules.get(step["module"])
        if module is None:
            return {"changed": False, "failed": True, "msg": f"unknown module '{step['module']}'"}
        try:
            args = render(step.get("args", {}), scope)
        except TemplateError as exc:
            return {"changed": False, "failed": True, "msg": f"templating: {exc}"}
        params, errors = argschema.validate(module.SCHEMA, args)
        if errors:
            return {"changed": False, "failed": True,
                    "msg": "; ".join((f"{e.key}: " if e.key else "") + e.message for e in errors)}
        self.ctx.variables = scope
        try:
            state = module.check(params, self.ctx)
            result: Result = module.apply(params, state, self.ctx)
            out: Dict[str, Any] = dict(result.data, changed=result.changed, failed=False, msg=result.msg)
            if result.diff is not None and (self.ctx.diff_mode or True):
                out["diff"] = result.diff
            if not result.predicted:
                out["predicted"] = False
        except ModuleError as exc:
            out = dict(exc.data, changed=False, failed=True, msg=exc.msg)
            output = str(exc.data.get("stderr") or exc.data.get("stdout") or "").strip()
            if output and output not in exc.msg:  # the why, right in the failure line
                out["msg"] = f"{exc.msg}: {tail(output, 5)}"
        except (OSError, ValueError, KeyError, TemplateError) as exc:
            out = {"changed": False, "failed": True, "msg": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:  # a bug in a module fails its step, not the whole agent run
            out = {"changed": False, "failed": True,
                   "msg": f"module {step['module']} crashed: {type(exc).__name__}: {exc}"}
        local = dict(scope, **({step["register"]: out} if step.get("register") else {}))
        local["result"] = out
        if step.get("changed_when") is not None and not out["failed"]:
            out["changed"] = self._truth(step["changed_when"], local, step, "changed_when")
        if step.get("failed_when") is not None:
            out["failed"] = self._truth(step["failed_when"], local, step, "failed_when")
            if out["failed"] and not out.get("msg"):
                out["msg"] = "failed_when was true"
        return out

    # --- blocks and handlers ----------------------------------------------------
    def run_block(self, step: Dict[str, Any]) -> None:
        if step.get("when") is not None and not self._truth(step["when"], self.variables, step, "when"):
            self.emit({"event": "step", "index": step.get("index"), "name": step.get("name"),
                       "module": "block", "status": "skipped", "msg": "when was false", "duration": 0})
            self.counts["skipped"] += 1
            return
        try:
            try:
                self.run_steps(step["block"])
            except StepFailed as exc:
                if not step.get("rescue"):
                    raise
                self.variables["kiln_failed_step"] = {"name": exc.step.get("name"), "msg": exc.msg}
                self.counts["failed"] -= 1
                self.counts["rescued"] = self.counts.get("rescued", 0) + 1
                self.run_steps(step["rescue"])
        finally:
            self.run_steps(step.get("always", []))

    def flush_handlers(self) -> None:
        pending, self.notified = self.notified, []
        for name in self.handler_order:
            if name in pending:
                self.run_step(self.handlers[name], handler=True)

    # --- expressions ------------------------------------------------------------
    def _eval(self, expression: Any, scope: Dict[str, Any], step: Dict[str, Any], keyword: str) -> Any:
        try:
            return evaluate(expression, scope)
        except TemplateError as exc:
            raise StepFailed(step, f"{keyword}: {exc}") from exc

    def _truth(self, expression: Any, scope: Dict[str, Any], step: Dict[str, Any], keyword: str) -> bool:
        if isinstance(expression, list):
            return all(self._truth(e, scope, step, keyword) for e in expression)
        return bool(self._eval(expression, scope, step, keyword))
