"""The idempotence check and verify ride in the apply's exec: fewer round trips, the same guarantees.

Each bake here is a real one (podman, systemd, SSH, the agent) run in-process, so the build
machine's SSH session can be asked how many commands it ran: the apply with the facts before it and
its re-run, checks, package inventory and what it set (for the image's checks) after it, then the hygiene
script (it was five: push, apply, re-run, verify, hygiene; then the push
and the facts had an exec of their own, and the hygiene script started the agent again for the
inventory). Whatever part fails still fails the bake at its own stage, with that stage's message.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from kiln.controller.bake import bake
from kiln.controller.context import BakeOptions
from kiln.controller.remote import box_agent, controller_compiled, digest
from tests.playbooks import image_repo, left_behind, make_playbooks

pytestmark = pytest.mark.slow

MARKER = '- name: marker\n  copy: {content: "x\\n", dest: /etc/kiln-marker, mode: "0644"}\n'


def bake_in_process(tmp_path: Path, role: str, files: dict[str, str], kiln_yaml: str = ""):
    playbooks = make_playbooks(tmp_path, files, role=role, kiln_yaml=kiln_yaml)
    options = BakeOptions(builds_dir=tmp_path / "builds", playbooks_dir=playbooks, test_image=False)
    return bake(role, "local", options)


def remove_images(engine, role: str) -> None:
    for row in engine.images(image_repo(role)):
        engine.run("rmi", "-f", row["Id"], check=False)


def announced(result) -> str:
    """The bake's build id as its log announces it (what ``left_behind`` looks for)."""
    return f"build {result.ctx.build_id}"


def test_a_clean_bake_starts_the_agent_once_and_reports_every_stage(engine, tmp_path):
    try:
        result = bake_in_process(tmp_path, "parts", {"steps.yml": MARKER, "verify.yml": "- file: /etc/kiln-marker\n"})
        assert result.exit_code == 0, result.error
        ctx = result.ctx
        box = box_agent(ctx)
        assert box.round_trips == 1, f"{box.round_trips} agent runs on the build machine (was 2: facts, apply)"
        assert ctx.session.round_trips == 2, f"{ctx.session.round_trips} commands over SSH (was 4, then 3)"
        assert box.packages is not None, "the apply's run lists the packages: the hygiene script starts no agent"
        assert ctx.packages == box.packages and "openssh-server" in ctx.packages, sorted(ctx.packages)[:5]
        assert ctx.facts["pkg_mgr"] == "apt", "the facts came with the apply's run"
        for stage in ("push agent and bundle", "apply steps", "idempotence check", "verify", "clean machine"):
            assert stage in ctx.timings, ctx.timings
        assert ctx.apply_counts.changed == 1 and ctx.rerun_counts.changed == 0 and ctx.rerun_counts.ok == 1
        assert ctx.checks == {"passed": 1, "failed": 0}
        assert box.compiled == digest(controller_compiled()), "the box runs the byte code the controller sent it"
    finally:
        remove_images(engine, "parts")


def test_a_base_whose_python_runs_the_byte_code_gets_no_agent_source_from_its_second_bake(engine, tmp_path):
    """A machine of a base image reported its python; the next bake on that image sends the agent's byte code
    and not its source (~0.33 MB), in one run: the box needs nothing else."""
    files = {"steps.yml": MARKER, "verify.yml": "- file: /etc/kiln-marker\n"}
    try:
        first = bake_in_process(tmp_path / "first", "pybase", files)
        assert first.exit_code == 0, first.error
        second = bake_in_process(tmp_path / "second", "pybase", files)
        assert second.exit_code == 0, second.error
        box = box_agent(second.ctx)
        assert box.round_trips == 1, "the box asked for the source"
        assert box.bytes_sent < len(zlib.compress(controller_compiled(), 1)) + 50_000, box.bytes_sent  # no source
        assert box.compiled == digest(controller_compiled())
    finally:
        remove_images(engine, "pybase")


def test_a_step_that_changes_again_fails_the_idempotence_check(engine, tmp_path):
    steps = MARKER + "- name: stamp\n  shell: date +%N > /etc/kiln-stamp\n"
    result = bake_in_process(tmp_path, "notidem", {"steps.yml": steps, "verify.yml": "- file: /etc/kiln-marker\n"})
    try:
        assert result.exit_code == 1
        assert result.ctx.current_stage == "idempotence check"
        assert result.error.startswith("idempotence check: not idempotent: a second apply changed #2 'stamp'"), (
            result.error
        )
        assert result.ctx.apply_counts.changed == 2 and result.ctx.rerun_counts.changed == 1
        assert result.ctx.checks == {}, "verify must not report on a machine that failed the idempotence check"
        assert result.ctx.session.round_trips == 1, f"{result.ctx.session.round_trips} commands (was 3, then 2)"
        assert not left_behind(engine, announced(result))
        assert not engine.images(image_repo("notidem"))
    finally:
        remove_images(engine, "notidem")


def test_a_failing_check_fails_verify_after_a_clean_idempotence_check(engine, tmp_path):
    checks = "- file: /etc/kiln-marker\n- file: /etc/not-there\n"
    result = bake_in_process(tmp_path, "badcheck", {"steps.yml": MARKER, "verify.yml": checks})
    try:
        assert result.exit_code == 1
        assert result.ctx.current_stage == "verify"
        assert result.error.startswith("verify: 1 check(s) failed: "), result.error
        assert "/etc/not-there" in result.error, result.error
        assert result.ctx.rerun_counts.changed == 0 and result.ctx.rerun_counts.ok == 1
        assert result.ctx.session.round_trips == 1, f"{result.ctx.session.round_trips} commands (was 4, then 2)"
        assert not left_behind(engine, announced(result))
        assert not engine.images(image_repo("badcheck"))
    finally:
        remove_images(engine, "badcheck")


def test_a_frozen_agent_in_the_checks_is_bounded_by_verify_s_own_limit(engine, tmp_path):
    """The agent stops (SIGSTOP) inside a check: verify's bound (build.step_timeout) fires, not the apply's."""
    checks = "- command: {cmd: 'kill -STOP $PPID; true', timeout: 2}\n"
    result = bake_in_process(
        tmp_path,
        "frozencheck",
        {"steps.yml": MARKER, "verify.yml": checks},
        kiln_yaml="build:\n  step_timeout: 3\n",
    )
    try:
        assert result.exit_code == 1
        assert result.ctx.current_stage == "verify", result.error
        assert "the agent did not finish the verify within 3s" in result.error, result.error
        assert result.ctx.rerun_counts.ok == 1, "the idempotence check passed before the checks froze"
        assert result.ctx.timings["apply steps"] < 60, result.ctx.timings
        assert not left_behind(engine, announced(result))
    finally:
        remove_images(engine, "frozencheck")
