"""The bake as a chain of small stages, each with its undo, unwound in reverse.

Like Packer's step runner: every stage that *started* gets its ``undo`` called,
last in first out, the failing one included, on success as well as on failure or
signal. ``undo`` decides from the context what to remove (a snapshot is kept on
success, an instance never is) and never raises: a failed undo logs what to remove
by hand and the unwinding goes on.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import structlog

from kiln.controller.context import BakeContext

log = structlog.get_logger("kiln.pipeline")


class BakeFailed(Exception):
    """A stage failed; the message says which and why (exit status 1)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; everything the bake created is removed."""


class Stage(Protocol):
    name: str

    def run(self, ctx: BakeContext) -> None: ...

    def undo(self, ctx: BakeContext) -> None: ...


#: Set by a scheduler (nightly) to stop bakes running in worker threads at their next stage.
CANCEL = threading.Event()


@contextmanager
def signals_interrupt() -> Iterator[list[str]]:
    """Turn SIGINT/SIGTERM into :class:`Interrupted` while the stages run (main thread only).

    Yields the signals received. Python runs the handler between any two bytecodes, also inside a weakref
    callback or a ``__del__`` (a finished thread's, for one), where the exception it raises is printed and
    dropped: such a signal is logged instead, and :func:`run_stages` obeys it at the stage's end."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum).name)
        raise Interrupted(received[-1])

    def unraisable(hook_args: sys.UnraisableHookArgs) -> None:
        if isinstance(hook_args.exc_value, Interrupted):
            log.warning(
                "signal received inside a clean-up callback; the bake stops when this stage ends",
                signal=str(hook_args.exc_value),
            )
            return
        previous_hook(hook_args)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield received
    finally:
        sys.unraisablehook = previous_hook
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def signals_deferred() -> Iterator[list[str]]:
    """While unwinding, a further signal is noted, not obeyed: cleanup must finish."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum).name)
        log.warning("signal received during cleanup; finishing cleanup first", signal=received[-1])

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_stages(stages: list[Stage], ctx: BakeContext, cancel: threading.Event | None = None) -> None:
    """Run ``stages`` in order; unwind every started one in reverse. Raises on failure.

    ``cancel`` (besides :data:`CANCEL`) stops the run at its next stage: one architecture's chain
    of a bake stops when another's failed (controller/stages/architectures.py)."""
    started: list[Stage] = []
    error: BaseException | None = None
    try:
        with signals_interrupt() as received:
            for stage in stages:
                if received:  # its exception was dropped where Python ran the handler (see signals_interrupt)
                    raise Interrupted(received[0])
                if CANCEL.is_set() or (cancel is not None and cancel.is_set()):
                    raise Interrupted("cancelled")
                started.append(stage)
                ctx.current_stage = stage.name
                t0 = time.monotonic()
                log.info("stage", stage=stage.name, role=ctx.role, build_id=ctx.build_id)
                stage.run(ctx)
                ctx.timings[stage.name] = round(time.monotonic() - t0, 3)
                log.info("stage done", stage=stage.name, seconds=ctx.timings[stage.name])
            if received:
                raise Interrupted(received[0])
            ctx.succeeded = True
    except BaseException as exc:  # noqa: B036 - unwinding must happen for signals too
        error = exc
        ctx.interrupted = isinstance(exc, Interrupted)
        ctx.failure = f"interrupted ({exc})" if ctx.interrupted else f"{ctx.current_stage}: {exc}"
    finally:
        with signals_deferred():
            unwind(started, ctx)
    if error is not None:
        raise error


def unwind(started: list[Stage], ctx: BakeContext) -> None:
    for stage in reversed(started):
        t0 = time.monotonic()
        try:
            stage.undo(ctx)
        except Exception as exc:  # undo never fails the bake; it says what is left
            log.error("cleanup failed; remove by hand", stage=stage.name, error=str(exc))
        elapsed = time.monotonic() - t0
        if elapsed > 0.05:
            ctx.timings[f"undo {stage.name}"] = round(elapsed, 3)
