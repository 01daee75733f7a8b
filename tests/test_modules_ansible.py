"""Ansible's task semantics in the real agent, in a real container: set_fact, include_vars, assert, registered
results shaped like Ansible's, per-step environment/vars/become_user, failed_when with changed_when, a masked unit."""

from __future__ import annotations

import pytest

from tests.machines import steps_of

pytestmark = pytest.mark.slow


def test_set_fact_include_vars_and_registered_shape(box):
    box.sh("printf 'ntp_pkg: chrony\\nntp_servers:\\n  - a.example\\n  - b.example\\n' > /tmp/kt-vars.yml")
    events = box.apply(
        [
            {"module": "include_vars", "args": {"file": "/tmp/kt-vars.yml"}},
            {"module": "set_fact", "args": {"facts": {"ntp_first": "{{ ntp_servers[0] }}"}}},
            {"module": "command", "args": {"cmd": "printf 'a\\nb\\n'"}, "register": "out", "changed_when": False},
            {
                "module": "shell",
                "args": {"cmd": "echo $KT_VAR-$(whoami)-$HOME"},
                "register": "env_out",
                "changed_when": False,
                "environment": {"KT_VAR": "{{ ntp_pkg }}"},
                "become_user": "nobody",
            },
            {
                "module": "assert",
                "args": {
                    "that": [
                        "out.stdout == 'a\\nb'",
                        "out.stdout_lines == ['a', 'b']",
                        "out.rc == 0",
                        "ntp_first == 'a.example'",
                        "ansible_os_family == 'Debian'",
                        "ansible_facts.distribution == 'Debian'",
                        "env_out.stdout == 'chrony-nobody-/nonexistent'",
                        "step_var == 'here'",
                    ]
                },
                "vars": {"step_var": "here"},
            },
        ]
    )
    steps = steps_of(events)
    assert [s["status"] for s in steps] == ["ok"] * 5, steps


def test_failed_when_false_with_changed_when_false_is_ok(box):
    events = box.apply([{"module": "command", "args": {"cmd": "false"}, "failed_when": False, "changed_when": False}])
    assert steps_of(events)[0]["status"] == "ok", events


def test_disabling_a_masked_unit_is_ok_twice(box):
    box.sh("systemctl mask cron.service")
    try:
        for _ in range(2):
            step = steps_of(
                box.apply([{"module": "service", "args": {"name": "cron", "enabled": False, "state": "stopped"}}])
            )[0]
            assert step["status"] in ("ok", "changed") and step["status"] != "failed", step
        assert box.sh("systemctl is-enabled cron.service", check=False).strip() == "masked"
    finally:
        box.sh("systemctl unmask cron.service")


def test_assert_and_fail_report_their_message(box):
    steps = steps_of(
        box.apply(
            [
                {"module": "assert", "args": {"that": ["1 == 2"], "fail_msg": "no match"}, "ignore_errors": True},
                {"module": "fail", "args": {"msg": "stop here"}},
            ]
        )
    )
    assert steps[0]["status"] == "failed" and steps[0]["msg"].startswith("no match")
    assert steps[1]["status"] == "failed" and steps[1]["msg"] == "stop here"
