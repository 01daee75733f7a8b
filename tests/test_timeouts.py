"""Time limits: the ``timeout:`` step keyword, ``build.step_timeout``, the controller's bound
on an agent run, and SSH keepalives that notice a machine which stopped answering.

The agent-level tests run the real agent in a real container; the bake tests go through
the real `invoke bake` over real SSH, and one of them freezes the build machine with
``podman pause``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.controller.bake import with_build_settings
from kiln.controller.config import load_config
from kiln.controller.context import BakeOptions
from kiln.controller.model import InvalidInput
from kiln.controller.schema_export import DOC_PATH, json_schema
from kiln.controller.stepfiles.compile import compile_role
from tests.machines import AgentBox, steps_of, summary_of
from tests.playbooks import REPO, build_ids, invoke, left_behind, make_playbooks

TINY_ROLE = "description: t\nbase:\n  local: localhost/kiln-base/debian:bookworm\n"


# --- validation and settings (no machine) ---------------------------------------------------------
def compile_steps(root: Path, steps: str):
    role = root / "roles" / "t"
    role.mkdir(parents=True, exist_ok=True)
    (role / "role.yml").write_text(TINY_ROLE)
    (role / "steps.yml").write_text(steps)
    return compile_role(root, "t", "local", load_config(root / "kiln.yaml"))


def test_timeout_keyword_reaches_the_bundle(tmp_path: Path):
    compiled = compile_steps(tmp_path, "- command: sleep 1\n  timeout: 2.5\n- command: sleep 1\n")
    assert compiled.steps[0]["timeout"] == 2.5
    assert "timeout" not in compiled.steps[1], "no timeout: the bake's build.step_timeout applies"
    with pytest.raises(InvalidInput) as info:
        compile_steps(tmp_path, "- block:\n    - command: sleep 1\n      timeout: 1\n  timeout: 5\n")
    [problem] = info.value.diagnostics
    assert problem.line == 4 and "timeout" in problem.message, "a step keyword, not a block one"


@pytest.mark.parametrize("value", ["0", "-3", "soon", "true", "[1]", ".inf"])
def test_bad_timeout_is_invalid_input_at_its_place(tmp_path: Path, value: str):
    with pytest.raises(InvalidInput) as info:
        compile_steps(tmp_path, f"- name: wait\n  command: sleep 1\n  timeout: {value}\n")
    [problem] = info.value.diagnostics
    assert (problem.line, problem.column) == (3, 12), problem.render()
    assert "timeout must be a positive number of seconds" in problem.message
    assert "steps.yml:3:12" in problem.render()


def test_timeout_is_in_the_schema_and_the_reference():
    prop = json_schema()["$defs"]["step"]["properties"]["timeout"]
    assert prop["type"] == "number" and prop["exclusiveMinimum"] == 0
    assert "| `timeout` | Seconds the step may run" in DOC_PATH.read_text()


def test_build_step_timeout_and_keepalive_settings(tmp_path: Path):
    kiln_yaml = tmp_path / "kiln.yaml"
    defaults = load_config(kiln_yaml)
    assert (defaults.step_timeout, defaults.ssh_keepalive, defaults.ssh_keepalive_misses) == (3600.0, 15.0, 3)
    kiln_yaml.write_text("build:\n  step_timeout: 90\n  ssh_keepalive: 2.5\n  ssh_keepalive_misses: 4\n")
    options = with_build_settings(BakeOptions(), load_config(kiln_yaml))
    assert (options.step_timeout, options.ssh_keepalive, options.ssh_keepalive_misses) == (90.0, 2.5, 4)


@pytest.mark.parametrize(
    "text, where, message",
    [
        ("build: {step_timeout: 0}\n", (1, 23), "build.step_timeout must be a positive number"),
        ("build: {step_timeout: soon}\n", (1, 23), "build.step_timeout must be a positive number, got a string"),
        ("build: {ssh_keepalive: -1}\n", (1, 24), "build.ssh_keepalive must be a positive number"),
        ("build: {ssh_keepalive_misses: 1.5}\n", (1, 31), "build.ssh_keepalive_misses must be a whole number >= 1"),
        ("build: {ssh_keepalive_misses: 0}\n", (1, 31), "build.ssh_keepalive_misses must be a whole number >= 1"),
        ("build: {step_timeot: 5}\n", (1, 9), "unknown build setting 'step_timeot' (did you mean 'step_timeout'?)"),
    ],
)
def test_bad_build_time_settings(tmp_path: Path, text: str, where: tuple[int, int], message: str):
    (tmp_path / "kiln.yaml").write_text(text)
    with pytest.raises(InvalidInput) as info:
        load_config(tmp_path / "kiln.yaml")
    [problem] = info.value.diagnostics
    assert (problem.line, problem.column) == where and message in problem.message, problem.render()


def test_apply_bound_counts_every_step_at_its_limit():
    from kiln.controller.stages.apply_steps import apply_bound

    steps = [
        {"module": "command", "timeout": 5},
        {
            "module": "block",
            "block": [{"module": "command"}],
            "rescue": [{"module": "command", "timeout": 1}],
            "always": [{"module": "flush_handlers"}],
        },
        {"module": "command"},
    ]
    handlers = [{"module": "service", "timeout": 3}, {"module": "command"}]
    default = 10.0
    # 5 + 10 + 1 + 10 steps; handlers (3 + 10) may run at the flush and at the end
    assert apply_bound(steps, handlers, default) - 26 - 2 * 13 == pytest.approx(
        float(os.environ.get("KILN_AGENT_MARGIN") or 120.0)
    )


def test_an_include_loops_later_items_grow_the_bound_by_their_steps_limits():
    """Steps inside a looped block count once in apply_bound; each later start of one adds its limit, per part."""
    from kiln.controller.remote import LoopAllowance
    from kiln.controller.stages.apply_steps import looped_step_limits

    steps = [
        {"index": 1, "module": "set_fact"},
        {
            "index": 2,
            "module": "block",
            "loop": "{{ waits }}",
            "block": [{"index": 3, "module": "command", "timeout": 2}, {"index": 4, "module": "command"}],
        },
        {"index": 5, "module": "block", "block": [{"index": 6, "module": "command", "timeout": 7}]},
    ]
    limits = looped_step_limits(steps, 10.0)
    assert limits == {3: 2.0, 4: 10.0}
    loops = LoopAllowance(limits)
    start = [{"event": "start", "index": i} for i in (1, 3, 4, 3, 4, 3, 6, 6)]
    assert [loops.extra(e) for e in start] == [0, 0, 0, 2.0, 10.0, 2.0, 0, 0]
    assert loops.extra({"event": "phase", "phase": "idempotence check"}) == 0
    assert [loops.extra(e) for e in start[:4]] == [0, 0, 0, 2.0]  # the re-run's first item is in its bound


# --- the agent in a real container -------------------------------------------------------------
pytest_slow = pytest.mark.slow


def apply_bundle(box: AgentBox, bundle: dict, bound: float = 30) -> tuple[list[dict], float]:
    """Run the real agent on ``bundle``; return its events and the wall time. ``bound``: the test's own."""
    for i, step in enumerate(bundle["steps"], 1):
        step.setdefault("index", i)
        step.setdefault("name", f"step {i}")
    bundle.setdefault("vars", {})
    box.sh("rm -rf /var/lib/kiln/tt")
    box.put({"/var/lib/kiln/tt/bundle.json": (json.dumps(bundle).encode(), 0o600)})
    started = time.monotonic()
    out = box.engine.run(
        "exec", box.name, "python3", "/var/lib/kiln/agent.pyz", "apply", "/var/lib/kiln/tt", check=False, timeout=bound
    )
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], time.monotonic() - started


def sleepers(box: AgentBox, marker: str) -> str:
    return box.sh(f"pgrep -af '[s]leep {marker}' || true")


@pytest_slow
def test_hung_step_fails_names_itself_and_kills_what_it_started(box: AgentBox):
    events, took = apply_bundle(
        box,
        {
            "steps": [
                {
                    "name": "wait forever",
                    "module": "shell",
                    "args": {"cmd": "sleep 100001 & sleep 100002; wait"},
                    "timeout": 2,
                    "ignore_errors": True,
                },
                {"name": "after", "module": "command", "args": {"cmd": "true"}},
            ]
        },
    )
    hung, after = steps_of(events)
    assert hung["status"] == "failed" and hung["timed_out"] and hung["ignored"], hung
    assert hung["msg"] == "step 1 'wait forever' timed out after 2s"
    assert 2 <= hung["duration"] < 4
    assert after["status"] == "changed", "ignore_errors: the run goes on after a timeout"
    assert took < 15
    assert sleepers(box, "10000") == "", "a process of the timed-out step survived"


@pytest_slow
def test_timeout_is_a_failure_for_rescue_failed_when_and_register(box: AgentBox):
    events, _ = apply_bundle(
        box,
        {
            "steps": [
                {
                    "module": "block",
                    "name": "guarded",
                    "block": [
                        {
                            "index": 2,
                            "name": "stuck",
                            "module": "command",
                            "args": {"cmd": "sleep 100003"},
                            "timeout": 1,
                            "failed_when": False,
                            "register": "stuck_result",
                        },
                    ],
                    "rescue": [
                        {
                            "index": 3,
                            "name": "recover",
                            "module": "shell",
                            "args": {
                                "cmd": "test '{{ stuck_result.timed_out }}' = True && "
                                'test "{{ kiln_failed_step.msg }}" = "step 2 \'stuck\' timed out after 1s"'
                            },
                        },
                    ],
                },
            ]
        },
    )
    stuck, recover = steps_of(events)
    assert stuck["status"] == "failed" and stuck["rescued"], "failed_when cannot clear a timeout"
    assert recover["status"] == "changed", recover["msg"]
    assert summary_of(events)["ok_run"]
    assert sleepers(box, "100003") == ""


@pytest_slow
def test_limit_covers_retries_and_module_code_that_runs_no_command(box: AgentBox):
    """until/retries: one limit for the whole step; the delay between attempts is Python (the alarm's job)."""
    events, took = apply_bundle(
        box,
        {
            "steps": [
                {
                    "name": "poll",
                    "module": "command",
                    "args": {"cmd": "true"},
                    "until": "false",
                    "retries": 100,
                    "delay": 1,
                    "timeout": 2.5,
                },
                {"name": "after", "module": "command", "args": {"cmd": "true"}},
            ]
        },
        bound=30,
    )
    poll = steps_of(events)[0]
    assert poll["msg"] == "step 1 'poll' timed out after 2.5s" and poll["duration"] < 4, poll
    assert len(steps_of(events)) == 1, "a timed-out step fails the run"
    assert took < 15
    events, _ = apply_bundle(
        box,
        {
            "steps": [
                {
                    "name": "loop",
                    "module": "command",
                    "args": {"cmd": "sleep 1"},
                    "loop": [1, 2, 3, 4, 5],
                    "timeout": 2.5,
                },
            ]
        },
        bound=30,
    )
    loop = steps_of(events)[0]
    assert loop["msg"] == "step 1 'loop' timed out after 2.5s", "the limit covers all the loop's items"


@pytest_slow
def test_bundle_default_limit_applies_to_steps_and_handlers(box: AgentBox):
    events, took = apply_bundle(
        box,
        {
            "step_timeout": 1.5,
            "steps": [
                {"name": "notify", "module": "command", "args": {"cmd": "true"}, "notify": ["slow handler"]},
                {"name": "own limit", "module": "command", "args": {"cmd": "sleep 2"}, "timeout": 5},
            ],
            "handlers": [{"index": 9, "name": "slow handler", "module": "command", "args": {"cmd": "sleep 100004"}}],
        },
    )
    notify, own, handler = steps_of(events)
    assert own["status"] == "changed", "a step's own timeout wins over the default"
    assert handler["handler"] and handler["msg"] == "step 9 'slow handler' timed out after 1.5s"
    assert summary_of(events)["failed_step"] == "slow handler"
    assert took < 15 and sleepers(box, "100004") == ""


# --- whole bakes over SSH ---------------------------------------------------------------------
HUNG_STEPS = '- name: ok first\n  command: "true"\n- name: wait forever\n  command: sleep 100000\n{extra}'


@pytest_slow
def test_bake_with_a_hung_step_fails_in_bounded_time(engine, tmp_path: Path):
    make_playbooks(tmp_path, {"steps.yml": HUNG_STEPS.format(extra="  timeout: 2\n")}, role="hung")
    started = time.monotonic()
    proc = invoke(tmp_path, "bake", "--role", "hung", timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "step 2 'wait forever' timed out after 2s" in proc.stderr, proc.stderr[-3000:]
    assert took < 45, f"a 2 s step limit took {took:.0f}s to fail the bake"
    assert not left_behind(engine, proc.stderr), "the build machine (and its sleep) was left behind"


@pytest_slow
def test_build_step_timeout_is_the_default_limit(engine, tmp_path: Path):
    make_playbooks(
        tmp_path,
        {"steps.yml": HUNG_STEPS.format(extra="")},
        role="hungdefault",
        kiln_yaml="build:\n  step_timeout: 2\n",
    )
    proc = invoke(tmp_path, "bake", "--role", "hungdefault", timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "step 2 'wait forever' timed out after 2s" in proc.stderr, proc.stderr[-3000:]
    assert not left_behind(engine, proc.stderr)


@pytest_slow
def test_a_frozen_agent_is_bounded_by_the_controller(engine, tmp_path: Path):
    """The agent itself stops (SIGSTOP): its step limits cannot fire, the controller's bound does."""
    make_playbooks(
        tmp_path,
        {"steps.yml": "- name: freeze the agent\n  shell: kill -STOP $PPID; sleep 1\n  timeout: 2\n"},
        role="frozenagent",
    )
    started = time.monotonic()
    proc = invoke(tmp_path, "bake", "--role", "frozenagent", env={"KILN_AGENT_MARGIN": "3"}, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "the agent did not finish within 5s" in proc.stderr, proc.stderr[-3000:]
    assert "lost step 1 'freeze the agent' while it ran" in proc.stderr, proc.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert not left_behind(engine, proc.stderr)


def start_bake(cwd: Path, role: str) -> subprocess.Popen:
    env = dict(os.environ, KILN_JSON="1", CI="", KILN_STATE_DIR=str(cwd / "state"))
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "-r", str(REPO), "bake", "--role", role],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_line(proc: subprocess.Popen, seen: list[str], needle: str, within: float) -> None:
    deadline = time.monotonic() + within
    for line in proc.stderr:
        seen.append(line)
        if needle in line:
            return
        assert time.monotonic() < deadline, "".join(seen)[-3000:]
    raise AssertionError(f"the bake ended before {needle!r}: {''.join(seen)[-3000:]}")


@pytest_slow
def test_a_paused_build_machine_fails_the_bake_within_the_keepalive_silence(engine, tmp_path: Path):
    make_playbooks(
        tmp_path,
        {"steps.yml": "- name: long sleep\n  command: sleep 60\n"},
        role="frozen",
        kiln_yaml="build:\n  ssh_keepalive: 2\n  ssh_keepalive_misses: 3\n",
    )
    proc = start_bake(tmp_path, "frozen")
    seen: list[str] = []
    paused: list[str] = []
    try:
        wait_for_line(proc, seen, '"stage": "apply steps"', within=120)
        [machine] = engine.containers(f"kiln.build-id={build_ids(''.join(seen))[0]}")
        for _ in range(100):  # the step is running on the box
            if engine.exec(machine["Id"], "pgrep", "-f", "[s]leep 60", check=False).strip():
                break
            time.sleep(0.2)
        engine.run("pause", machine["Id"])
        paused.append(machine["Id"])
        frozen_at = time.monotonic()
        _, rest = proc.communicate(timeout=90)
        took = time.monotonic() - frozen_at
    finally:
        if proc.poll() is None:  # the bake did not notice: let it unwind (and remove its machine) itself
            for machine_id in paused:
                engine.run("unpause", machine_id, check=False)
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=120)
    output = "".join(seen) + rest
    assert proc.returncode == 1, output[-3000:]
    assert "connection to kiln-build@127.0.0.1:" in output and "the machine stopped answering" in output, output[-3000:]
    assert "lost step 1 'long sleep' while it ran" in output
    # 2 s probes, 3 misses: silent 6 s, noticed within one more interval; the rest is the undo
    assert took < 30, f"the frozen machine took {took:.0f}s to fail the bake"
    print(f"frozen machine failed the bake {took:.1f}s after the pause")
    assert not left_behind(engine, output), "the paused build machine was left behind"


@pytest_slow
def test_an_include_loop_longer_than_one_pass_of_its_steps_is_within_the_bound(engine, tmp_path: Path):
    """An include loop's steps run once per item, a count only the box knows: each later item adds its steps'
    limits to the controller's bound as they start (without it, 4 items of 1.5 s outran a bound of 2 s + 2 s + 1)."""
    make_playbooks(
        tmp_path,
        {
            "tasks/main.yml": (
                "- name: the items\n  set_fact: {waits: [1, 2, 3, 4]}\n"
                '- name: each\n  include_tasks: wait.yml\n  loop: "{{ waits }}"\n'
            ),
            "tasks/wait.yml": "- name: wait\n  command: sleep 1.5\n  changed_when: false\n",
        },
        role="loopbound",
        kiln_yaml="build:\n  step_timeout: 2\n",
    )
    proc = invoke(tmp_path, "bake", "--role", "loopbound", "--no-test", env={"KILN_AGENT_MARGIN": "1"}, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
