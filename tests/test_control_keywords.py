"""Control keywords end to end: the real agent in a real container (systemd, podman exec).

Each case applies a small bundle and asserts both what the agent reported (the step
statuses, the summary) and what is really on the box afterwards (``box.sh``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.machines import AgentBox, steps_of, summary_of

pytestmark = pytest.mark.slow

LOG = "/srv/ck/{case}/log"


def sh(cmd: str, name: str | None = None, **keywords: Any) -> dict[str, Any]:
    step: dict[str, Any] = {"module": "shell", "args": {"cmd": cmd}, **keywords}
    if name:
        step["name"] = name
    return step


def note(case: str, text: str, name: str | None = None, **keywords: Any) -> dict[str, Any]:
    """A step appending one line to the case's log (the order things really ran in)."""
    return sh(f"echo {text} >> {LOG.format(case=case)}", name=name or f"note {text}", **keywords)


def copy(dest: str, content: str, name: str, **keywords: Any) -> dict[str, Any]:
    return {"module": "copy", "args": {"content": content, "dest": dest}, "name": name, **keywords}


@dataclass
class Case:
    id: str
    steps: list[dict[str, Any]]
    statuses: list[tuple[str, str]]  # (step name, status) of every step event, in order
    probe: str  # shell reading the box's state
    state: str  # what the probe must print
    handlers: list[dict[str, Any]] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)
    ok_run: bool = True
    summary: dict[str, int] = field(default_factory=dict)  # summary fields to match
    events: Any = None  # optional extra assertion on the whole event list


def _d(case: str) -> str:
    return f"/srv/ck/{case}"


CASES = [
    Case(
        "when",
        steps=[
            copy(f"{_d('when')}/yes", "y\n", "when true", when="flag == 1"),
            copy(f"{_d('when')}/no", "n\n", "when false", when="flag == 2"),
            copy(f"{_d('when')}/debian", "d\n", "when on facts", when="facts.os_family == 'debian'"),
            copy(f"{_d('when')}/list", "l\n", "when list is all", when=["flag == 1", "flag > 5"]),
        ],
        variables={"flag": 1},
        statuses=[
            ("when true", "changed"),
            ("when false", "skipped"),
            ("when on facts", "changed"),
            ("when list is all", "skipped"),
        ],
        probe=f"ls {_d('when')}",
        state="debian\nyes\n",
        summary={"changed": 2, "skipped": 2},
    ),
    Case(
        "loop",
        steps=[
            {
                "module": "file",
                "name": "dirs",
                "loop": "{{ dirs }}",
                "loop_var": "dir",
                "args": {"path": _d("loop") + "/{{ dir }}", "state": "directory"},
            },
            {
                "module": "file",
                "name": "literal loop with when",
                "loop": ["x", "y", "z"],
                "when": "item != 'y'",
                "args": {"path": _d("loop") + "/{{ item }}", "state": "directory"},
            },
            {"module": "file", "name": "empty loop", "loop": [], "args": {"path": "/nowhere", "state": "absent"}},
        ],
        variables={"dirs": ["a", "b", "c"]},
        statuses=[("dirs", "changed"), ("literal loop with when", "changed"), ("empty loop", "ok")],
        probe=f"ls {_d('loop')}",
        state="a\nb\nc\nx\nz\n",
        events=lambda steps: steps[0]["items"] == 3 and steps[1]["items"] == 3 and steps[2]["items"] == 0,
    ),
    Case(
        "register",
        steps=[
            sh("echo hello; echo warn >&2", "say hello", register="out", changed_when=False),
            copy(
                f"{_d('register')}/said",
                "{{ out.stdout }}\n",
                "write what was said",
                when="'hello' in out.stdout and out.rc == 0",
            ),
            copy(f"{_d('register')}/never", "x", "skipped on rc", when="out.rc != 0"),
            copy(f"{_d('register')}/stderr", "err={{ out.stderr | trim }}\n", "stderr registered too"),
            {
                "module": "file",
                "name": "loop registers results",
                "register": "made",
                "loop": ["m1", "m2"],
                "args": {"path": _d("register") + "/{{ item }}", "state": "directory"},
            },
            copy(
                f"{_d('register')}/count", "{{ made.results | length }} {{ made.changed }}\n", "read the loop's results"
            ),
        ],
        statuses=[
            ("say hello", "ok"),
            ("write what was said", "changed"),
            ("skipped on rc", "skipped"),
            ("stderr registered too", "changed"),
            ("loop registers results", "changed"),
            ("read the loop's results", "changed"),
        ],
        probe=f"cd {_d('register')} && ls && cat said stderr count",
        state="count\nm1\nm2\nsaid\nstderr\nhello\nerr=warn\n2 True\n",
    ),
    Case(
        "changed_when",
        steps=[
            sh(
                f"mkdir -p {_d('changed_when')} && touch {_d('changed_when')}/ran",
                "ran but reports ok",
                changed_when=False,
            ),
            sh("echo CHANGED", "changed from output", register="r", changed_when="'CHANGED' in r.stdout"),
            sh("echo same", "unchanged from output", changed_when="'CHANGED' in result.stdout"),
        ],
        statuses=[("ran but reports ok", "ok"), ("changed from output", "changed"), ("unchanged from output", "ok")],
        probe=f"ls {_d('changed_when')}",
        state="ran\n",
    ),
    Case(
        "failed_when",
        steps=[
            sh("exit 2", "rc 2 is fine here", register="r", failed_when="r.rc not in [0, 2]"),
            note("failed_when", "after-rc2"),
            sh("echo ERROR: disk full", "fails on output", failed_when="'ERROR' in result.stdout"),
            note("failed_when", "never"),
        ],
        statuses=[("rc 2 is fine here", "changed"), ("note after-rc2", "changed"), ("fails on output", "failed")],
        probe=f"cat {LOG.format(case='failed_when')}",
        state="after-rc2\n",
        ok_run=False,
        summary={"failed": 1},
    ),
    Case(
        "ignore_errors",
        steps=[
            sh("echo broken >&2; exit 4", "fails but ignored", ignore_errors=True, register="bad"),
            note("ignore_errors", "rc-{{ bad.rc }}-failed-{{ bad.failed }}", name="goes on"),
        ],
        statuses=[("fails but ignored", "failed"), ("goes on", "changed")],
        probe=f"cat {LOG.format(case='ignore_errors')}",
        state="rc-4-failed-True\n",
        summary={"ignored": 1, "failed": 0, "changed": 1},
        events=lambda steps: steps[0].get("ignored") is True and "broken" in steps[0]["msg"],
    ),
    Case(
        "retries_until",
        steps=[
            sh(
                f"mkdir -p {_d('retries_until')}; (sleep 1.5; touch {_d('retries_until')}/ready) >/dev/null 2>&1 &",
                "start something slow",
            ),
            {
                "module": "command",
                "name": "wait for it",
                "register": "w",
                "retries": 20,
                "delay": 0.25,
                "until": "w.rc == 0",
                "args": {"cmd": f"test -e {_d('retries_until')}/ready"},
            },
            note("retries_until", "attempts-{{ 'many' if w.attempts > 2 else 'few' }}", name="record attempts"),
            sh(
                f"test -e {_d('retries_until')}/flaky || {{ touch {_d('retries_until')}/flaky; exit 1; }}",
                "flaky, retried without until",
                retries=2,
                delay=0,
            ),
            {
                "module": "command",
                "name": "never ready",
                "retries": "{{ tries }}",
                "delay": 0,
                "until": "result.rc == 0",
                "args": {"cmd": "false"},
            },
        ],
        variables={"tries": "2"},
        statuses=[
            ("start something slow", "changed"),
            ("wait for it", "changed"),
            ("record attempts", "changed"),
            ("flaky, retried without until", "changed"),
            ("never ready", "failed"),
        ],
        probe=f"ls {_d('retries_until')}; cat {LOG.format(case='retries_until')}",
        state="flaky\nlog\nready\nattempts-many\n",
        ok_run=False,
        events=lambda steps: "after 3 attempts" in steps[-1]["msg"],
    ),
    Case(
        "handlers",
        steps=[
            sh(f"mkdir -p {_d('handlers')}", "dir", changed_when=False),
            copy(f"{_d('handlers')}/a", "a\n", "change a", notify=["second", "first"]),
            copy(f"{_d('handlers')}/b", "b\n", "change b", notify=["first"]),
            copy(f"{_d('handlers')}/a", "a\n", "unchanged a", notify=["third"]),
            note("handlers", "last-step"),
        ],
        handlers=[
            note("handlers", "first", name="first"),
            note("handlers", "second", name="second"),
            note("handlers", "third", name="third"),
        ],
        statuses=[
            ("dir", "ok"),
            ("change a", "changed"),
            ("change b", "changed"),
            ("unchanged a", "ok"),
            ("note last-step", "changed"),
            ("first", "changed"),
            ("second", "changed"),
        ],
        probe=f"cat {LOG.format(case='handlers')}",
        state="last-step\nfirst\nsecond\n",
        events=lambda steps: [s.get("handler", False) for s in steps[-2:]] == [True, True],
    ),
    Case(
        "flush_handlers",
        steps=[
            sh(f"mkdir -p {_d('flush_handlers')}", "dir", changed_when=False),
            copy(f"{_d('flush_handlers')}/conf", "c\n", "config", notify=["restart"]),
            {"module": "flush_handlers", "name": "flush now"},
            note("flush_handlers", "after-flush"),
            copy(f"{_d('flush_handlers')}/conf2", "c\n", "config again", notify=["restart"]),
        ],
        handlers=[note("flush_handlers", "restart", name="restart")],
        statuses=[
            ("dir", "ok"),
            ("config", "changed"),
            ("restart", "changed"),
            ("note after-flush", "changed"),
            ("config again", "changed"),
            ("restart", "changed"),
        ],
        probe=f"cat {LOG.format(case='flush_handlers')}",
        state="restart\nafter-flush\nrestart\n",
    ),
    Case(
        "block_rescue_always",
        steps=[
            sh(f"mkdir -p {_d('block_rescue_always')}", "dir", changed_when=False),
            {
                "module": "block",
                "name": "guarded",
                "block": [
                    note("block_rescue_always", "b1"),
                    sh("echo boom-reason >&2; exit 3", "boom"),
                    note("block_rescue_always", "b3"),
                ],
                "rescue": [
                    note(
                        "block_rescue_always", "rescued-{{ kiln_failed_step.name | replace(' ', '_') }}", name="rescue"
                    )
                ],
                "always": [note("block_rescue_always", "always", name="always")],
            },
            note("block_rescue_always", "after"),
        ],
        statuses=[
            ("dir", "ok"),
            ("note b1", "changed"),
            ("boom", "failed"),
            ("rescue", "changed"),
            ("always", "changed"),
            ("note after", "changed"),
        ],
        probe=f"cat {LOG.format(case='block_rescue_always')}",
        state="b1\nrescued-boom\nalways\nafter\n",
        summary={"failed": 0, "changed": 4},
        events=lambda steps: steps[2].get("rescued") is True,
    ),
    Case(
        "block_always_then_fail",
        steps=[
            sh(f"mkdir -p {_d('block_always_then_fail')}", "dir", changed_when=False),
            {
                "module": "block",
                "name": "no rescue",
                "block": [sh("exit 1", "breaks")],
                "always": [note("block_always_then_fail", "cleanup", name="cleanup")],
            },
            note("block_always_then_fail", "never"),
            {
                "module": "block",
                "name": "skipped block",
                "when": "false",
                "block": [note("block_always_then_fail", "never2")],
            },
        ],
        statuses=[("dir", "ok"), ("breaks", "failed"), ("cleanup", "changed")],
        probe=f"cat {LOG.format(case='block_always_then_fail')}",
        state="cleanup\n",
        ok_run=False,
        summary={"failed": 1},
    ),
    Case(
        "no_log",
        steps=[
            sh(f"mkdir -p {_d('no_log')}", "dir", changed_when=False),
            sh(
                "echo {{ secret }} > " + _d("no_log") + "/s; echo {{ secret }}",
                "uses the secret",
                no_log=True,
                register="said",
            ),
            copy(_d("no_log") + "/copied", "s={{ secret }}\n", "diff of a secret", no_log=True),
            sh("echo {{ secret }} >&2; exit 1", "fails loudly", no_log=True, ignore_errors=True),
        ],
        variables={"secret": "hunter2-s3cr3t"},
        statuses=[
            ("dir", "ok"),
            ("uses the secret", "changed"),
            ("diff of a secret", "changed"),
            ("fails loudly", "failed"),
        ],
        probe=f"cat {_d('no_log')}/s {_d('no_log')}/copied",
        state="hunter2-s3cr3t\ns=hunter2-s3cr3t\n",
        events=lambda steps: all(s["msg"] == "<redacted: no_log>" for s in steps[1:]),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_control_keyword(box: AgentBox, case: Case):
    box.sh(f"rm -rf {_d(case.id)}; mkdir -p {_d(case.id)}")
    events = box.apply(
        json.loads(json.dumps(case.steps)), handlers=json.loads(json.dumps(case.handlers)), variables=case.variables
    )
    steps = steps_of(events)
    summary = summary_of(events)
    assert [(s["name"], s["status"]) for s in steps] == case.statuses, json.dumps(steps, indent=1)
    assert summary["ok_run"] is case.ok_run, summary
    for key, value in case.summary.items():
        assert summary[key] == value, (key, summary)
    assert box.sh(case.probe, check=False) == case.state
    if case.events is not None:
        assert case.events(steps), json.dumps(steps, indent=1)
    if case.id == "no_log":
        assert "hunter2" not in json.dumps(events), "a no_log value leaked into the agent's events"


def test_start_event_precedes_each_step(box: AgentBox):
    """Every step is announced (index, name, module) before it runs: the controller's progress ticker."""
    events = box.apply([sh("true", "one"), {"module": "block", "name": "b", "block": [sh("true", "two")]}], handlers=[])
    kinds = [(e["event"], e.get("name")) for e in events if e["event"] in ("start", "step")]
    assert kinds == [("start", "one"), ("step", "one"), ("start", "two"), ("step", "two")]
    start = next(e for e in events if e["event"] == "start")
    assert start["index"] == 1 and start["module"] == "shell"


def test_idempotent_rerun_of_control_keywords(box: AgentBox):
    """Handlers notified by a change do not run when nothing changed the second time."""
    d = "/srv/ck/rerun"
    box.sh(f"rm -rf {d}; mkdir -p {d}")
    steps = [copy(f"{d}/conf", "x\n", "conf", notify=["h"])]
    handlers = [sh(f"echo h >> {d}/log", name="h")]
    first = steps_of(box.apply(json.loads(json.dumps(steps)), handlers=json.loads(json.dumps(handlers))))
    second = steps_of(box.apply(json.loads(json.dumps(steps)), handlers=json.loads(json.dumps(handlers))))
    assert [s["status"] for s in first] == ["changed", "changed"]
    assert [s["status"] for s in second] == ["ok"]
    assert box.sh(f"cat {d}/log") == "h\n"
