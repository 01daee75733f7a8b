"""Parity with ansible-core: our Galaxy-style roles, unchanged, applied by ansible-playbook and by kiln.

Each role is one group: one ansible-playbook run and one kiln run on two containers from the same
base; every test below compares one part of the end state the probe reads (tests/ansible_diff.py).
There are no expected values here: ansible-playbook's result is the expectation.

A case kiln cannot pass yet is ``xfail(strict=True)`` with the missing feature as its reason: it
turns into a failure the moment it passes, and its marker must then go.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.controller.engine import Engine
from tests.ansible_diff import (
    ROLES,
    Comparison,
    Differentials,
    Run,
    compare_role,
    compare_states,
    differences,
    differential,
    registered_view,
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

#: group -> about how long its run took alone in CI (seconds): the longest start first
SECONDS = {"kiln_mods": 105, "kiln_posix": 75, "kiln_auth": 60, "kiln_app": 40, "kiln_system": 35, "kiln_pkgs": 23}


def register(role: str) -> None:
    """The group's one run each way (on two containers of this session), shared by its tests."""

    @differential(role, SECONDS[role])
    def run(engine: Engine, work: Path) -> Comparison:
        return compare_role(engine, GROUPS[role] / role, work, labels={TEST_LABEL: SESSION})


for _role in GROUPS:
    register(_role)


def comparison(differentials: Differentials, role: str) -> Comparison:
    result = differentials(role)
    assert result.ansible.ok, f"ansible-playbook itself failed on {role}:\n{result.ansible.output[-3000:]}"
    return result


def case(role: str, what: str):
    reason = MISSING.get((role, what))
    marks = [pytest.mark.differential(role)] + ([pytest.mark.xfail(strict=True, reason=reason)] if reason else [])
    return pytest.param(role, what, marks=marks, id=f"{role}-{what}")


@pytest.mark.slow
@pytest.mark.parametrize(("role", "what"), [case(role, "applies") for role in GROUPS])
def test_kiln_applies_the_role_unchanged(differentials: Differentials, role: str, what: str) -> None:
    result = comparison(differentials, role)
    assert result.kiln.ok, result.report(kinds=())


@pytest.mark.slow
@pytest.mark.parametrize(("role", "what"), [case(role, kind) for role in GROUPS for kind in KINDS])
def test_end_state_equals_ansible_playbooks(differentials: Differentials, role: str, what: str) -> None:
    result = comparison(differentials, role)
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
