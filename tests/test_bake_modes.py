"""Check mode, diff mode, no_log redaction and progress lines, through the real `invoke` CLI.

Real bakes (and converges on a kept instance) of tiny roles on the local engine:
what the terminal view and the JSON log say, and what is (not) on the machine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.playbooks import image_repo, invoke, left_behind, make_playbooks

pytestmark = pytest.mark.slow

STEPS = """\
- name: app dir
  file: {path: /srv/kiln-cd, state: directory, mode: "0750"}
- name: app config
  copy: {content: "port=8080\\nworkers=2\\n", dest: /etc/kiln-cd.conf, mode: "0644"}
- name: app user
  user: {name: kcd, shell: /bin/bash}
- name: hello package
  package: {name: hello}
- name: app unit
  copy:
    dest: /etc/systemd/system/kiln-cd.service
    content: |
      [Service]
      ExecStart=/bin/sleep infinity
      [Install]
      WantedBy=multi-user.target
- name: app service
  service: {name: kiln-cd, state: started, enabled: true, daemon_reload: true}
- name: migrate
  command: {cmd: "touch /srv/kiln-cd/migrated", creates: /srv/kiln-cd/migrated}
"""
VERIFY = '- file: /etc/kiln-cd.conf\n  contains: ["port=8080"]\n'
NAMES = ["app dir", "app config", "app user", "hello package", "app unit", "app service", "migrate"]
PROBE = (
    "ls -d /srv/kiln-cd /etc/kiln-cd.conf /etc/systemd/system/kiln-cd.service 2>&1; id kcd 2>&1; "
    "dpkg-query -W hello 2>&1; systemctl is-active kiln-cd 2>&1; true"
)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def steps_in(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("event") == "step"]


# --- check mode ------------------------------------------------------------------------------
def test_bake_check_reports_changes_nothing_published(engine, tmp_path: Path):
    make_playbooks(tmp_path, {"steps.yml": STEPS, "verify.yml": VERIFY}, role="cdcheck")
    proc = invoke(tmp_path, "bake", "--role", "cdcheck", "--check", "--json", playbooks=tmp_path / "playbooks")
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = json_lines(proc.stderr)
    steps = steps_in(events)
    assert [(s["step"], s["status"]) for s in steps] == [(n, "changed") for n in NAMES]
    assert all(s.get("check_mode") is True for s in steps)
    unpredictable = [s["step"] for s in steps if s.get("predicted") is False]
    assert unpredictable == ["app service", "migrate"], steps  # a unit not there yet; a command
    assert next(s for s in steps if s["step"] == "hello package")["msg"] == "would install hello"
    stages = [e["stage"] for e in events if e.get("event") == "stage"]
    assert stages[-1] == "apply steps" and "idempotence check" not in stages and "snapshot" not in stages
    assert not left_behind(engine, proc.stderr), "check mode left its machine behind"
    assert not engine.images(image_repo("cdcheck")), "check mode must not make an image"
    assert not (tmp_path / "builds" / "manifest.json").exists()
    reserved = tmp_path / "state" / "versions" / "cdcheck"
    assert reserved.is_dir() and not any(reserved.iterdir()), "the version reservation must be released"
    recap = next(e for e in events if e.get("event") == "recap")
    assert recap["changed"] == 7 and recap["check_mode"] is True and recap["version"] == "-"

    # the terminal view says the same, per step
    view = invoke(tmp_path, "bake", "--role", "cdcheck", "--check").stderr
    assert "in check mode" in view
    assert re.search(r"changed\s+\[4\] hello package \(package\).*\(would install hello\)", view), view
    assert re.search(r"\[7\] migrate \(command\).*\(cannot predict in check mode", view), view
    assert "nothing was changed or published" in view


def test_converge_check_changes_nothing_then_diff_shows_every_change(engine, tmp_path: Path):
    make_playbooks(tmp_path, {"steps.yml": STEPS}, role="cddiff")
    try:
        checked = invoke(tmp_path, "converge", "--role", "cddiff", "--check", "--json")
        assert checked.returncode == 0, checked.stderr[-3000:]
        container = json.loads((tmp_path / "builds/dev/cddiff.json").read_text())["instance"]["id"]
        assert [s["status"] for s in steps_in(json_lines(checked.stderr))] == ["changed"] * 7
        untouched = engine.exec(container, "sh", "-c", PROBE)
        assert untouched.count("No such file") == 3 and "no such user" in untouched, untouched
        assert "no packages found matching hello" in untouched and "inactive" in untouched, untouched

        # --diff, terminal view: unified diffs for files, before -> after for users, packages, services
        applied = invoke(tmp_path, "converge", "--role", "cddiff", "--diff", env={"KILN_JSON": ""})
        assert applied.returncode == 0, applied.stderr[-3000:]
        view = applied.stderr
        assert "+++ /etc/kiln-cd.conf (after)" in view and "+port=8080" in view and "+workers=2" in view
        assert re.search(r"absent -> name=kcd, .*shell=/bin/bash", view), view
        assert re.search(r"hello: absent -> \d[\w.:+~-]*", view), view
        assert "state: inactive -> active" in view and re.search(r"enabled: \S+ -> enabled", view), view
        assert "absent -> mode=0750, state=directory" in view
        changed = engine.exec(container, "sh", "-c", PROBE)
        assert "No such file" not in changed and "uid=" in changed and "\nactive" in changed, changed

        # a change to one file: only its diff, in JSON too
        steps_file = tmp_path / "playbooks/roles/cddiff/steps.yml"
        steps_file.write_text(STEPS.replace("workers=2", "workers=4"))
        again = invoke(tmp_path, "converge", "--role", "cddiff", "--diff", "--json")
        assert again.returncode == 0, again.stderr[-3000:]
        steps = steps_in(json_lines(again.stderr))
        assert [s["step"] for s in steps if s["status"] == "changed"] == ["app config"]
        unified = next(s for s in steps if s["step"] == "app config")["diff"]["unified"]
        assert "-workers=2\n" in unified and "+workers=4\n" in unified and " port=8080\n" in unified

        # and check mode now finds nothing to do
        rechecked = invoke(tmp_path, "converge", "--role", "cddiff", "--check", "--json")
        assert [s["status"] for s in steps_in(json_lines(rechecked.stderr))] == ["ok"] * 7
    finally:
        invoke(tmp_path, "destroy", "--role", "cddiff")


# --- no_log -----------------------------------------------------------------------------------
SECRET = "Sup3r-S3cret-9f2c"
NO_LOG_STEPS = """\
- name: write the password
  shell: {cmd: "echo {{ db_password }} > /etc/kiln-db-password; echo {{ db_password }}", creates: /etc/kiln-db-password}
  no_log: true
- name: app credentials
  copy: {content: "password={{ db_password }}\\n", dest: /etc/kiln-app.conf, mode: "0600"}
  no_log: true
- name: the same value in a step without no_log
  copy: {content: "pw={{ db_password }}\\n", dest: /etc/kiln-other.conf, mode: "0600"}
- name: an error that quotes it
  shell: {cmd: "echo 'login failed for {{ db_password }}' >&2; exit 1"}
  ignore_errors: true
- name: a failing secret step
  shell: {cmd: "echo {{ db_password }} >&2; exit 1"}
  no_log: true
  ignore_errors: true
"""
NO_LOG_VERIFY = '- file: /etc/kiln-app.conf\n  contains: ["password="]\n'


@pytest.mark.parametrize("json_output", [False, True], ids=["terminal", "json"])
def test_no_log_secret_from_var_is_nowhere(engine, tmp_path: Path, json_output: bool):
    role = "nolog" + ("json" if json_output else "term")
    make_playbooks(tmp_path, {"steps.yml": NO_LOG_STEPS, "verify.yml": NO_LOG_VERIFY}, role=role)
    args = ["bake", "--role", role, "--var", f"db_password={SECRET}", "--diff"] + (["--json"] if json_output else [])
    proc = invoke(tmp_path, *args, playbooks=tmp_path / "playbooks", env={"KILN_JSON": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert SECRET not in output, [line for line in output.splitlines() if SECRET in line]
    assert "redacted" in output  # the agent's no_log marker and the controller's mask both show
    if json_output:
        steps = steps_in(json_lines(proc.stderr))
        other = next(s for s in steps if s["step"] == "the same value in a step without no_log")
        assert "pw=<redacted>" in other["diff"]["unified"]  # masked inside a nested diff
        quoted = next(s for s in steps if s["step"] == "an error that quotes it")
        assert "login failed for <redacted>" in quoted["error"]
    else:
        assert "+pw=<redacted>" in proc.stderr
    for path in (tmp_path / "builds").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), f"{path} holds the secret"
    manifest = json.loads((tmp_path / "builds" / "manifest.json").read_text())
    assert manifest[-1]["role"] == role
    # the secret did reach the machine: the image has it, the logs do not
    image = f"{image_repo(role)}:{manifest[-1]['version']}"
    try:
        content = engine.run(
            "run",
            "--rm",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            "--entrypoint",
            "cat",
            image,
            "/etc/kiln-app.conf",
        )
        assert content == f"password={SECRET}\n"
    finally:
        for row in engine.images(image_repo(role)):
            engine.run("rmi", "-f", row["Id"], check=False)


# --- progress -----------------------------------------------------------------------------------
def test_long_step_shows_still_running(engine, tmp_path: Path):
    make_playbooks(
        tmp_path,
        {
            "steps.yml": "- name: slow install\n  command: {cmd: sleep 4}\n"
            "  idempotent: false\n  idempotent_reason: just sleeps\n"
        },
        role="slowstep",
    )
    env = {"KILN_PROGRESS_SECONDS": "1", "KILN_JSON": "1"}
    proc = invoke(tmp_path, "converge", "--role", "slowstep", env=env)
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        events = json_lines(proc.stderr)
        ticks = [e for e in events if e["event"] == "still running"]
        assert len(ticks) >= 2, [e["event"] for e in events]
        assert all(t["step"] == "slow install" and t["index"] == 1 and t["module"] == "command" for t in ticks)
        assert ticks[-1]["seconds"] > ticks[0]["seconds"]
        done = next(i for i, e in enumerate(events) if e["event"] == "step")
        assert all(events.index(t) < done for t in ticks), "no progress line after the step finished"
        view = invoke(tmp_path, "converge", "--role", "slowstep", env=dict(env, KILN_JSON=""))
        assert re.search(r"\.\.\.\s+\[1\] slow install \(command\)\s+still running, \d+s", view.stderr), view.stderr
    finally:
        invoke(tmp_path, "destroy", "--role", "slowstep")
