"""`invoke converge --watch`: one connection, one warm agent, a re-apply on every save, Ctrl-C ends it."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.playbooks import REPO, invoke, make_playbooks

pytestmark = pytest.mark.slow

STEPS = """\
- name: page
  template: {src: page.j2, dest: /etc/kiln-watch-page, mode: "0644"}
  notify: note reload
- name: other file
  copy: {content: "other\\n", dest: /etc/kiln-watch-other}
- name: motd
  template: {src: motd.j2, dest: /etc/kiln-watch-motd}
"""
HANDLERS = """\
- name: note reload
  shell: date +%s%N >> /etc/kiln-watch-reloads
"""


class Watching:
    """A running `converge --watch`, its JSON log lines read as they come."""

    def __init__(self, cwd, role: str) -> None:
        env = {**os.environ, "KILN_JSON": "1", "CI": "", "KILN_STATE_DIR": str(cwd / "state")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "invoke", "-r", str(REPO), "converge", "--watch", "--role", role],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line)

    def until(self, event: str, timeout: float = 120) -> tuple[dict, list[dict]]:
        """The next log line with this event, and the JSON lines before it."""
        deadline = time.monotonic() + timeout
        before: list[dict] = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, f"watch ended ({self.proc.returncode}): {''.join(self.seen)[-2000:]}"
                continue
            self.seen.append(line)
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if record.get("event") == event:
                return record, before
            before.append(record)
        raise AssertionError(f"no '{event}' within {timeout}s: {''.join(self.seen)[-2000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.reader.join(10)
            while not self.lines.empty():
                self.seen.append(self.lines.get())


def stepped(records: list[dict]) -> dict[str, str]:
    return {r["step"]: r["status"] for r in records if r.get("event") == "step"}


def test_watch_reapplies_only_what_a_save_touched_and_ends_cleanly(engine, tmp_path):
    playbooks = make_playbooks(
        tmp_path,
        {
            "steps.yml": STEPS,
            "handlers.yml": HANDLERS,
            "templates/page.j2": "page one\n",
            "templates/motd.j2": "hello\n",
        },
        role="watched",
    )
    role_dir = playbooks / "roles" / "watched"
    try:
        watch_then_stop(engine, tmp_path, role_dir)
    finally:
        gone = invoke(tmp_path, "destroy", "--role", "watched")
        assert gone.returncode == 0, gone.stdout + gone.stderr
    assert not engine.containers("kiln.role=watched")


def watch_then_stop(engine, tmp_path, role_dir) -> None:
    watching = Watching(tmp_path, "watched")
    try:
        applied, before = watching.until("applied")
        assert applied["steps"] == "all" and applied["failed"] == 0, applied
        assert stepped(before) == {
            "page": "changed",
            "other file": "changed",
            "motd": "changed",
            "note reload": "changed",
        }
        watching.until("watching")
        container = json.loads((tmp_path / "builds/dev/watched.json").read_text())["instance"]["id"]
        reloads = engine.exec(container, "sh", "-c", "wc -l < /etc/kiln-watch-reloads").strip()

        # one template changes: its step and the handler it notifies, nothing else
        (role_dir / "templates/page.j2").write_text("page two\n")
        again, before = watching.until("re-applied")
        assert again["steps"] == 1 and again["changed"] == 2 and again["failed"] == 0, again  # the step, its handler
        assert stepped(before) == {"page": "changed", "note reload": "changed"}
        assert engine.exec(container, "cat", "/etc/kiln-watch-page") == "page two\n"
        assert int(engine.exec(container, "sh", "-c", "wc -l < /etc/kiln-watch-reloads")) == int(reloads) + 1

        # a step edited in steps.yml: that step alone
        (role_dir / "steps.yml").write_text(STEPS.replace("other\\n", "another\\n"))
        again, before = watching.until("re-applied")
        assert again["steps"] == 1 and again["changed"] == 1, again
        assert stepped(before) == {"other file": "changed"}
        assert engine.exec(container, "cat", "/etc/kiln-watch-other") == "another\n"

        # a save that changes nothing: the whole role, a no-op
        os.utime(role_dir / "templates/motd.j2")
        again, before = watching.until("re-applied")
        assert again["steps"] == "all" and again["changed"] == 0 and again["failed"] == 0, again
        assert again["ok"] == 3

        # invalid input is shown and the watch goes on
        (role_dir / "steps.yml").write_text(STEPS + "- name: broken\n  nosuchmodule: {}\n")
        watching.until("not applied: invalid input (fix it and save again)")
        (role_dir / "steps.yml").write_text(STEPS)
        watching.until("re-applied")
    finally:
        code = watching.stop()
    assert code == 0, "".join(watching.seen)[-2000:]
    assert any('"watch ended; the instance is kept"' in line for line in watching.seen)
    # the instance is kept, and no agent is left serving on it
    assert engine.status(container) == "running"
    serving = engine.exec(container, "sh", "-c", "ps -eo args | grep -c '[s]erve' || true").strip()
    assert serving == "0", serving
    after = invoke(tmp_path, "converge", "--role", "watched", env={"KILN_JSON": "1"})
    assert after.returncode == 0, after.stderr[-2000:]
