"""A signal is obeyed even when Python runs its handler where an exception cannot propagate.

CPython runs a signal handler between any two bytecodes of the main thread, also inside a weakref
callback (a finished thread's entry in ``threading``'s bookkeeping is one) or a ``__del__``; the
exception the handler raises there is printed as "Exception ignored in ..." with a traceback and
dropped. The bake's background threads (the base's and the versions' prefetch, the SSH preload)
made that moment a real one: a SIGINT at the first stage was once lost that way.
"""

from __future__ import annotations

import os
import signal
import types
import weakref

import pytest

from kiln.controller.pipeline import Interrupted, run_stages


class Recorded:
    def __init__(self, name: str, calls: list[str], on_run=None) -> None:
        self.name, self.calls, self.on_run = name, calls, on_run

    def run(self, ctx) -> None:
        self.calls.append(f"run {self.name}")
        if self.on_run:
            self.on_run()

    def undo(self, ctx) -> None:
        self.calls.append(f"undo {self.name}")


class Collected:
    """An object whose weakref callback is where the signal's handler runs."""


def signal_inside_a_weakref_callback() -> None:
    def callback(_ref) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):  # bytecodes for the interpreter to run the pending handler between
            pass

    target = Collected()
    ref = weakref.ref(target, callback)
    del target  # the callback runs here; an exception raised inside it cannot reach this frame
    assert ref() is None


def context() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        role="r", build_id="b", current_stage="", timings={}, succeeded=False, interrupted=False, failure=""
    )


def test_a_signal_whose_exception_python_dropped_stops_the_bake_when_its_stage_ends(capsys):
    calls: list[str] = []
    stages = [Recorded("first", calls, signal_inside_a_weakref_callback), Recorded("second", calls)]
    ctx = context()
    with pytest.raises(Interrupted, match="SIGINT"):
        run_stages(stages, ctx)
    assert calls == ["run first", "undo first"], "the stage after the signal must not run"
    assert ctx.interrupted and not ctx.succeeded
    assert "Traceback" not in capsys.readouterr().err


def test_a_signal_in_the_last_stage_whose_exception_was_dropped_is_still_an_interruption():
    calls: list[str] = []
    ctx = context()
    with pytest.raises(Interrupted):
        run_stages([Recorded("only", calls, signal_inside_a_weakref_callback)], ctx)
    assert calls == ["run only", "undo only"]
    assert not ctx.succeeded


def test_an_ordinary_signal_still_interrupts_at_once():
    calls: list[str] = []

    def signal_here() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):
            pass
        calls.append("went on after the signal")

    with pytest.raises(Interrupted):
        run_stages([Recorded("first", calls, signal_here), Recorded("second", calls)], context())
    assert calls == ["run first", "undo first"]
