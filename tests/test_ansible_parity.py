"""Parity with ansible-core: our Galaxy-style roles, unchanged, applied by ansible-playbook and by kiln.

Each role is one group: one ansible-playbook run and one kiln run on two containers from the same
base; every test below compares one part of the end state the probe reads (tests/ansible_diff.py).
There are no expected values here: ansible-playbook's result is the expectation.

A case kiln cannot pass yet is ``xfail(strict=True)`` with the missing feature as its reason: it
turns into a failure the moment it passes, and its marker must then go.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.ansible_diff import (
    ROLES,
    Comparison,
    Run,
    compare_role,
    compare_states,
    differences,
    registered_view,
    workdir,
)
from tests.machines import SESSION, TEST_LABEL

PARITY_ROLES = Path(__file__).resolve().parent / "parity_roles"
#: group -> the folder of its role: tests/ansible_roles (Galaxy-style roles) and tests/parity_roles (one role per
#: group of modules: apt, apt_key, apt_repository, hostname, wait_for, get_url, pip in kiln_mods; community.general's
#: pamd and community.crypto's openssh_keypair in kiln_auth, with the collections from .venv/ansible-collections;
#: apt's deb, clean, policy_rc_d, allow_change_held_packages, update_cache alone and systemd's scope, no_block,
#: daemon_reexec in kiln_system; ansible.posix's authorized_key, find and tempfile in kiln_posix)
GROUPS = {
    "kiln_app": ROLES,
    "kiln_pkgs": ROLES,
    "kiln_mods": PARITY_ROLES,
    "kiln_auth": PARITY_ROLES,
    "kiln_system": PARITY_ROLES,
    "kiln_posix": PARITY_ROLES,
}
KINDS = ("files", "packages", "services", "users", "groups", "registered")

#: (role, what) -> the feature kiln lacks today; "applies" is kiln's run finishing without refusal
MISSING: dict[tuple[str, str], str] = {
    ("kiln_pkgs", "registered"): "apt's registered stdout is apt-get's own output, which differs run to run "
    "(the download rate in 'Fetched ... kB/s') and by apt's progress lines ('Reading state information...')",
    ("kiln_system", "registered"): "apt's registered stdout is apt-get's own output (as in kiln_pkgs); what each "
    "task reported changed is compared in the role's /opt/kiln-system/reported",
}

_results: dict[str, Comparison] = {}


def comparison(engine, role: str) -> Comparison:
    """The group's one run each way, shared by its tests."""
    if role not in _results:
        work = workdir()
        try:
            _results[role] = compare_role(engine, GROUPS[role] / role, work, labels={TEST_LABEL: SESSION})
        finally:
            shutil.rmtree(work, ignore_errors=True)
    result = _results[role]
    assert result.ansible.ok, f"ansible-playbook itself failed on {role}:\n{result.ansible.output[-3000:]}"
    return result


def case(role: str, what: str):
    reason = MISSING.get((role, what))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(role, what, marks=marks, id=f"{role}-{what}")


@pytest.mark.slow
@pytest.mark.parametrize(("role", "what"), [case(role, "applies") for role in GROUPS])
def test_kiln_applies_the_role_unchanged(engine, role: str, what: str) -> None:
    result = comparison(engine, role)
    assert result.kiln.ok, result.report(kinds=())


@pytest.mark.slow
@pytest.mark.parametrize(("role", "what"), [case(role, kind) for role in GROUPS for kind in KINDS])
def test_end_state_equals_ansible_playbooks(engine, role: str, what: str) -> None:
    result = comparison(engine, role)
    assert result.kiln.ok and not result.state[what], result.report(kinds=(what,))


# --- the comparison itself can fail (no containers: two probes' worth of plain data) ------------------
def probe_like(**changes) -> dict:
    state = {
        "files": {"/etc/app.conf": {"type": "file", "mode": "0644", "owner": "root", "group": "root", "text": "a=1"}},
        "packages": {"jq": "1.6-2.1 ii"},
        "services": {"cron.service": {"enabled": "enabled", "active": "active"}},
        "users": {"app": "app:x:997:997::/opt/app:/usr/sbin/nologin"},
        "groups": {"app": "app:x:997:"},
    }
    for kind, value in changes.items():
        state[kind] = value
    return state


def test_equal_states_have_no_differences() -> None:
    assert not any(compare_states(probe_like(), probe_like()).values())


@pytest.mark.parametrize(
    ("kind", "changed", "shown"),
    [
        ("files", {"/etc/app.conf": {"type": "file", "mode": "0600", "owner": "root", "group": "root"}}, "mode"),
        ("packages", {}, "only ansible has it"),
        ("services", {"cron.service": {"enabled": "disabled", "active": "active"}}, "enabled"),
        ("users", {"app": "app:x:997:997::/opt/app:/bin/sh"}, "/bin/sh"),
    ],
)
def test_a_difference_is_named(kind: str, changed: dict, shown: str) -> None:
    found = compare_states(probe_like(), probe_like(**{kind: changed}))[kind]
    assert found and shown in found[0], found


def test_file_contents_differ_as_a_diff() -> None:
    a = {"/x": {"type": "file", "mode": "0644", "owner": "root", "group": "root", "sha256": "1", "text": "a\nb"}}
    k = {"/x": {"type": "file", "mode": "0644", "owner": "root", "group": "root", "sha256": "2", "text": "a\nc"}}
    (line,) = differences(a, k, "files")
    assert "-b" in line and "+c" in line, line


def test_registered_values_compare_ansibles_shape() -> None:
    ansible = {"changed": False, "rc": 0, "stdout": "x", "stdout_lines": ["x"], "stderr": "", "delta": "0:00:00.01"}
    kiln = {"changed": False, "rc": 0, "stdout": "x\n", "stderr": ""}
    found = differences({"r": registered_view(ansible)}, {"r": registered_view(kiln)}, "registered")
    assert found and "stdout" in found[0] and "stdout_lines" in found[0], found
    assert "delta" not in found[0]


def test_a_tool_that_did_not_finish_is_not_equal() -> None:
    done, refused = Run("ansible", 1.0, True, ""), Run("kiln", 0.1, False, "refused at validate")
    assert not Comparison("r", done, refused, {"files": []}).equal
