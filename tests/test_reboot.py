"""The reboot module: the machine really reboots, the agent resumes with the next step.

Agent level (AgentBox, the harness playing the controller): state survives the reboot
(registered results, notified handlers, a block's always, a handler that reboots).
Whole bakes (the real `invoke` CLI): the controller closes SSH, the local provider
starts the stopped container again, SSH reconnects with the pinned host key, and
the idempotence check does not reboot a second time.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.machines import AgentBox, steps_of, summary_of
from tests.playbooks import image_repo, invoke, make_playbooks

pytestmark = pytest.mark.slow

AGENT = "/var/lib/kiln/agent.pyz"
PID1_START = "cut -d' ' -f22 /proc/1/stat"


@pytest.fixture
def rebootable(engine) -> AgentBox:
    """A box of its own: rebooting the shared one would disturb other tests."""
    machine = AgentBox(engine).start()
    yield machine
    machine.stop()


def wait_running(box: AgentBox, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = box.engine.exec(box.name, "systemctl", "is-system-running", check=False).strip()
        if out in ("running", "degraded"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{box.name} did not boot within {timeout}s")


def resume_after_reboot(box: AgentBox, timeout: float = 60) -> list[dict]:
    """What the controller does on a reboot event, with podman directly."""
    deadline = time.monotonic() + timeout
    while box.engine.run("container", "inspect", "--format", "{{.State.Status}}", box.name).strip() == "running":
        assert time.monotonic() < deadline, "the container did not go down"
        time.sleep(0.2)
    box.engine.start(box.name)
    wait_running(box)
    out = box.engine.exec(box.name, "python3", AGENT, "apply", "/var/lib/kiln/t", "--resume", check=False)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def apply_through_reboots(box: AgentBox, steps: list[dict], **kwargs) -> tuple[list[dict], int]:
    events = box.apply(steps, **kwargs)
    everything, reboots = list(events), 0
    while events and events[-1]["event"] == "reboot":
        reboots += 1
        assert reboots < 5, everything
        events = resume_after_reboot(box)
        everything += events
    return everything, reboots


def note(text: str, name: str | None = None, **keywords) -> dict:
    return {
        "module": "shell",
        "name": name or f"note {text}",
        "args": {"cmd": f"echo {text} >> /srv/rb/log"},
        **keywords,
    }


def test_resume_keeps_registered_results_blocks_and_handlers(rebootable: AgentBox):
    box = rebootable
    box.sh(f"mkdir -p /srv/rb && {PID1_START} > /srv/rb/pid1-before && touch /run/kiln-test-before")
    steps = [
        {"module": "shell", "name": "say one", "args": {"cmd": "echo one"}, "register": "said", "changed_when": False},
        {
            "module": "copy",
            "name": "config",
            "args": {"content": "x\n", "dest": "/srv/rb/conf"},
            "notify": ["restart thing"],
        },
        {
            "module": "block",
            "name": "guarded",
            "block": [
                {"module": "reboot", "name": "reboot in a block", "args": {"msg": "test"}, "register": "rb"},
                note("after-{{ said.stdout | trim }}-{{ rb.rebooted }}", name="after reboot"),
                {"module": "shell", "name": "fails", "args": {"cmd": "exit 1"}},
            ],
            "rescue": [note("rescued-{{ kiln_failed_step.name }}", name="rescue")],
            "always": [note("always", name="always")],
        },
        note("last"),
    ]
    handlers = [note("handler", name="restart thing")]
    events, reboots = apply_through_reboots(box, steps, handlers=handlers)
    assert reboots == 1
    reboot = next(e for e in events if e["event"] == "reboot")
    assert reboot["name"] == "reboot in a block" and reboot["timeout"] == 300
    statuses = [(s["name"], s["status"]) for s in steps_of(events)]
    assert statuses == [
        ("say one", "ok"),
        ("config", "changed"),
        ("reboot in a block", "changed"),
        ("after reboot", "changed"),
        ("fails", "failed"),
        ("rescue", "changed"),
        ("always", "changed"),
        ("note last", "changed"),
        ("restart thing", "changed"),
    ]
    summary = summary_of(events)
    assert summary["ok_run"] is True and summary["changed"] == 7 and summary["rescued"] == 1, summary
    assert [c["name"] for c in summary["changed_steps"]][:2] == ["config", "reboot in a block"]
    assert box.sh("cat /srv/rb/log") == "after-one-True\nrescued-fails\nalways\nlast\nhandler\n"
    # the box really rebooted: a new PID 1, a fresh /run, the run state consumed
    assert box.sh(PID1_START) != box.sh("cat /srv/rb/pid1-before")
    assert box.sh("test -e /run/kiln-test-before && echo kept || echo gone").strip() == "gone"
    # the run state consumed: what is left is the bundle and what the run set, for verify.yml (run-vars.json)
    assert box.sh("ls /var/lib/kiln/t").split() == ["bundle.json", "run-vars.json"]

    # again: already rebooted for this step since the boot, so nothing reboots, nothing changes
    pid1 = box.sh(PID1_START)
    events, reboots = apply_through_reboots(box, json.loads(json.dumps(steps)), handlers=handlers)
    assert reboots == 0
    assert [s["status"] for s in steps_of(events)][:3] == ["ok", "ok", "ok"]
    assert box.sh(PID1_START) == pid1
    # check mode on a box that has not rebooted for this step: would reboot, does not
    box.sh("rm -f /run/kiln/rebooted-*")
    checked = steps_of(box.apply(json.loads(json.dumps(steps[2:3])), check=True))
    assert checked[0]["status"] == "changed" and "would reboot" in checked[0]["msg"]
    assert box.sh(PID1_START) == pid1


def test_a_handler_that_reboots_then_the_next_handler(rebootable: AgentBox):
    box = rebootable
    box.sh("mkdir -p /srv/rb")
    steps = [
        {
            "module": "copy",
            "name": "kernel",
            "args": {"content": "k\n", "dest": "/srv/rb/kernel"},
            "notify": ["after reboot", "reboot host"],
        },
        {"module": "flush_handlers", "name": "flush"},
        note("after-flush"),
    ]
    handlers = [{"module": "reboot", "name": "reboot host", "args": {}}, note("handler-after", name="after reboot")]
    events, reboots = apply_through_reboots(box, steps, handlers=handlers)
    assert reboots == 1
    assert [(s["name"], s["status"], s.get("handler", False)) for s in steps_of(events)] == [
        ("kernel", "changed", False),
        ("reboot host", "changed", True),
        ("after reboot", "changed", True),
        ("note after-flush", "changed", False),
    ]
    assert box.sh("cat /srv/rb/log") == "handler-after\nafter-flush\n"


def test_reboot_in_a_loop_fails_the_step(box: AgentBox):
    events = box.apply([{"module": "reboot", "name": "looped", "loop": [1, 2], "args": {}}])
    step = steps_of(events)[0]
    assert step["status"] == "failed" and "loop" in str(step), step
    assert not [e for e in events if e["event"] == "reboot"]


REBOOT_ROLE = {
    "steps.yml": """\
- name: before the reboot
  shell:
    cmd: "cut -d' ' -f22 /proc/1/stat > /etc/kiln-pid1-before; touch /run/kiln-before-reboot"
    creates: /etc/kiln-pid1-before
- name: reboot for the new kernel
  reboot: {msg: "kernel", reboot_timeout: 120}
- name: after the reboot
  shell:
    cmd: "test ! -e /run/kiln-before-reboot && cut -d' ' -f22 /proc/1/stat > /etc/kiln-pid1-after"
    creates: /etc/kiln-pid1-after
""",
    "verify.yml": """\
- file: /etc/kiln-pid1-after
  exists: true
- command: test "$(cat /etc/kiln-pid1-before)" != "$(cat /etc/kiln-pid1-after)"
""",
}


def json_events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_bake_reboots_reconnects_and_the_idempotence_check_does_not_reboot(engine, tmp_path):
    make_playbooks(tmp_path, REBOOT_ROLE, role="rebooter")
    try:
        proc = invoke(tmp_path, "bake", "--role", "rebooter", env={"KILN_JSON": "1"}, playbooks=tmp_path / "playbooks")
        _check_rebooting_bake(engine, tmp_path, proc)
    finally:
        for row in engine.images(image_repo("rebooter")):
            engine.run("rmi", "-f", row["Id"], check=False)


def test_a_rebooting_bake_on_a_base_whose_python_kiln_knows_lists_its_packages(engine, tmp_path):
    """The second bake on a base is sent no agent source (kiln knows the base's Python from the first one's facts);
    its apply is split by the reboot, so the clean stage lists the packages itself, through the bootstrap."""
    make_playbooks(tmp_path, REBOOT_ROLE, role="rebooter")
    try:
        for _ in range(2):
            proc = invoke(
                tmp_path, "bake", "--role", "rebooter", env={"KILN_JSON": "1"}, playbooks=tmp_path / "playbooks"
            )
            _check_rebooting_bake(engine, tmp_path, proc)
            cleaned = next(e for e in json_events(proc.stderr) if e["event"] == "cleaned")
            assert cleaned["packages"] > 50, cleaned
    finally:
        for row in engine.images(image_repo("rebooter")):
            engine.run("rmi", "-f", row["Id"], check=False)


def _check_rebooting_bake(engine, tmp_path, proc) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = json_events(proc.stderr)
    names = [e["event"] for e in events]
    assert names.count("rebooting") == 1 and names.count("rebooted") == 1, names
    steps = [(e["step"], e["status"]) for e in events if e["event"] == "step"]
    # first apply: all three changed (the reboot step too); the idempotence re-run (which logs only
    # what is not ok) changed nothing and did not reboot
    assert steps == [
        ("before the reboot", "changed"),
        ("reboot for the new kernel", "changed"),
        ("after the reboot", "changed"),
    ], steps
    assert any(e["event"] == "idempotent" for e in events)
    assert next(e for e in events if e["event"] == "applied")["changed"] == 3
    assert any(
        e["event"] == "check" and "kiln-pid1-before" in e.get("check", "") and e["status"] == "passed" for e in events
    ), "verify must see a new PID 1 after the reboot"
    entry = json.loads((tmp_path / "builds" / "manifest.json").read_text())[-1]
    assert entry["role"] == "rebooter" and entry["steps"]["changed"] == 3
    assert not engine.containers(f"kiln.build-id={entry['build_id']}"), "the build container was left behind"


def test_converge_reboots_once_then_reports_ok(engine, tmp_path):
    make_playbooks(tmp_path, REBOOT_ROLE, role="rebootdev")
    env = {"KILN_JSON": "1"}
    try:
        first = invoke(tmp_path, "converge", "--role", "rebootdev", env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        container = json.loads((tmp_path / "builds/dev/rebootdev.json").read_text())["instance"]["id"]
        before = engine.exec(container, "cat", "/etc/kiln-pid1-before").strip()
        after = engine.exec(container, "cat", "/etc/kiln-pid1-after").strip()
        assert before != after and engine.exec(container, "sh", "-c", PID1_START).strip() == after
        second = invoke(tmp_path, "converge", "--role", "rebootdev", env=env)
        assert second.returncode == 0, second.stderr[-3000:]
        assert "rebooting" not in [e["event"] for e in json_events(second.stderr)]
        assert engine.exec(container, "sh", "-c", PID1_START).strip() == after, "rebooted a second time"
    finally:
        invoke(tmp_path, "destroy", "--role", "rebootdev")
