"""The agent ↔ controller protocol (agent/protocol.py): events the agent prints parse into typed events."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

from kiln.agent.api import Context, Result
from kiln.agent.protocol import Event, StepStatus, first, parse_lines
from kiln.agent.runner import Runner

REPO = Path(__file__).resolve().parent.parent


def test_the_agents_facts_line_is_a_protocol_event():
    done = subprocess.run(
        [sys.executable, "-m", "agent", "facts"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    events = parse_lines(done.stdout)
    assert [e["event"] for e in events] == [Event.FACTS]
    assert json.loads(done.stdout.splitlines()[0])["event"] == "facts"  # the wire keeps the plain string


def test_an_event_is_read_whatever_its_spacing_and_among_shell_noise():
    output = 'dpkg: warning\n{"packages": {"bash": "5.2"}, "event":"packages"}\nnot json {\n'
    inventory = first(parse_lines(output), Event.PACKAGES)
    assert inventory is not None and inventory["packages"] == {"bash": "5.2"}


def test_a_module_that_asks_for_a_reboot_without_the_hooks_fails_its_step_cleanly(tmp_path):
    """The runner holds a rebooting module to the protocol's hooks (schedule/confirm) instead of crashing."""
    hookless = types.SimpleNamespace(
        SCHEMA={"args": {}},
        check=lambda params, ctx: {},
        apply=lambda params, state, ctx: Result(True, "please reboot", data={"reboot_requested": True, "key": "k"}),
    )
    events: list[dict] = []
    bundle = {"steps": [{"index": 1, "name": "reboot me", "module": "hookless", "args": {}}]}
    runner = Runner(bundle, Context(), events.append, modules={"hookless": hookless}, state_dir=str(tmp_path))
    runner.run()
    assert runner.exit_code == 1
    step = first(events, Event.STEP)
    assert step is not None and step["status"] == StepStatus.FAILED
    assert "no schedule/confirm hooks" in step["msg"]
    assert first(events, Event.REBOOT) is None
