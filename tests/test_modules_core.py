"""file and command modules, applied twice by the real agent in a real container."""

from __future__ import annotations

import pytest

from tests.machines import steps_of, summary_of

pytestmark = pytest.mark.slow


def test_file_directory_changed_then_ok(box):
    steps = [{"module": "file", "args": {"path": "/srv/t1", "state": "directory", "mode": "0750"}}]
    first = steps_of(box.apply(steps))
    assert first[0]["status"] == "changed", first
    assert box.sh("stat -c %a /srv/t1").strip() == "750"
    second = box.apply(steps)
    assert steps_of(second)[0]["status"] == "ok"
    assert summary_of(second)["changed"] == 0


def test_command_creates_guard(box):
    steps = [{"module": "command", "args": {"cmd": "touch /srv/t2-made", "creates": "/srv/t2-made"}}]
    assert steps_of(box.apply(steps))[0]["status"] == "changed"
    assert steps_of(box.apply(steps))[0]["status"] == "ok"


def test_failing_command_fails_the_run(box):
    events = box.apply(
        [
            {"module": "command", "args": {"cmd": "false"}},
            {"module": "file", "args": {"path": "/srv/t3", "state": "directory"}},
        ]
    )
    assert steps_of(events)[0]["status"] == "failed"
    assert len(steps_of(events)) == 1
    assert summary_of(events)["ok_run"] is False
    assert box.sh("test -e /srv/t3 && echo yes || echo no").strip() == "no"
